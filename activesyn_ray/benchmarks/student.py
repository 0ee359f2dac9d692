"""Student throughput: trainer samples/s (1 and 2 ranks); scoring + evaluation on the HF path with
S=1 and S=2 shards and on the vLLM path (frozen base + the same LoRA adapter, served as
student.vllm.adapter=auto serves it, and through vLLM's LoRARequest path) with S=1, all in the
same run; the bytes one adapter sync moves vs a full-weight sync; peak RSS per actor kind.

    python -m activesyn_ray.benchmarks.student                      # SmolLM2-135M + LoRA r=8
    python -m activesyn_ray.benchmarks.student --model tiny --ranks 2 --out bench_student.json

Sizes are small by default so it finishes in minutes on a 2-core CPU; raise them on GPUs
(`--num-gpus 1` gives every actor a GPU; the model then trains in bf16).
"""

from __future__ import annotations

import argparse
import os
import time

from activesyn_ray.benchmarks import write_result


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="student model spec (smollm2-135m, tiny)")
    p.add_argument("--ranks", type=int, default=1, choices=[1, 2],
                   help="2 also measures a 2-rank DeepSpeed group with the same global batch")
    p.add_argument("--train-examples", type=int, default=16)
    p.add_argument("--score-examples", type=int, default=16)
    p.add_argument("--eval-examples", type=int, default=16, help="test questions for evaluation")
    p.add_argument("--inference", default="hf,vllm",
                   help="scorer paths compared on the same adapter (vllm needs vLLM installed); "
                        "vllm_bf16: vLLM with bfloat16 weights, compared with vllm (fp32 on a CPU)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--micro", type=int, default=4, help="global micro batch (split over ranks)")
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--score-batch", type=int, default=16,
                   help="HF scorer batch (StudentPool default: 16)")
    p.add_argument("--needs", default="loss", help="comma list, e.g. loss,grad_embed")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per actor")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args()


def precision_agreement(fp32: tuple, bf16: tuple, fp32_result: dict, bf16_result: dict) -> dict:
    """What bf16 weights change in a scorer: speed, and how often it says the same thing (the
    same greedy answer, the same ranking by loss) as fp32 on the same adapter and items."""
    from scipy.stats import pearsonr, spearmanr

    (rows32, comp32), (rows16, comp16) = fp32, bf16
    loss32 = [r["loss"] for r in rows32]
    loss16 = [r["loss"] for r in rows16]
    return {
        "examples": len(rows32), "eval_examples": len(comp32),
        "same_answer_share": sum(p["answer_text"] == q["answer_text"]
                                 for p, q in zip(rows32, rows16)) / max(1, len(rows32)),
        "same_completion_share": sum(p == q for p, q in zip(comp32, comp16)) / max(1, len(comp32)),
        "loss_pearson": float(pearsonr(loss32, loss16)[0]),
        "loss_spearman": float(spearmanr(loss32, loss16)[0]),
        "max_abs_loss_diff": max(abs(p - q) for p, q in zip(loss32, loss16)),
        "mean_abs_loss_diff": sum(abs(p - q) for p, q in zip(loss32, loss16)) / max(1, len(loss32)),
        "score_ratio": bf16_result["examples_per_s"] / fp32_result["examples_per_s"],
        "eval_ratio": bf16_result["eval_examples_per_s"] / fp32_result["eval_examples_per_s"],
        "accuracy_fp32": fp32_result["accuracy"], "accuracy_bf16": bf16_result["accuracy"]}


def main() -> None:
    a = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from activesyn_ray.actors import ActorGroup
    from activesyn_ray.config import ActorResources, config_from_dict
    from activesyn_ray.runtime import worker_env
    from activesyn_ray.student.scoring import ScorerWorker, resolve_inference
    from activesyn_ray.student.trainer import TrainerWorker
    from activesyn_ray.tasks import build_task

    def cfg_for(ranks: int):
        return config_from_dict({
            "task": {"kind": "gym", "name": "basic_arithmetic",
                     "seed_size": max(a.train_examples, a.score_examples + 2),
                     "test_size": a.eval_examples},
            "student": {"model": a.model, "epochs": a.epochs, "micro_batch_size": a.micro // ranks,
                        "max_seq_len": a.max_seq_len, "max_new_tokens": a.max_new_tokens},
            "resources": {"trainer": {"num_workers": ranks, "num_cpus": a.num_cpus,
                                      "num_gpus": a.num_gpus}},
        })

    cfg = cfg_for(1)
    task = build_task(cfg.task, seed=0)
    seeds, test = task.splits()
    train_data = [{"question": e.question, "target": task.target(e)} for e in seeds[:a.train_examples]]
    items = [{"question": e.question, "answer": task.target(e)} for e in seeds]
    # the warm-up scores OTHER seeds: vLLM's prefix cache would serve a warm-up prompt for free
    score_items, warm_items = items[:a.score_examples], items[a.score_examples:a.score_examples + 2]
    eval_items = [{"question": e.question} for e in test]
    needs = [n for n in a.needs.split(",") if n]
    paths = [p for p in a.inference.split(",") if p]
    if "vllm" in paths and resolve_inference(cfg.student.model_copy(update={"inference": "auto"})) != "vllm":
        print("vLLM is not importable here: scoring runs on the HF path only", flush=True)
        paths = [p for p in paths if not p.startswith("vllm")]

    n_actors = max(a.ranks, 2) + 1
    # address="local": always our own Ray, never a cluster someone else started on this machine
    ray.init(address="local", num_cpus=int(max(4, n_actors * a.num_cpus + 1)),
             include_dashboard=False, runtime_env={"env_vars": worker_env()}, log_to_driver=False)
    results: dict = {"model": a.model, "args": vars(a), "peak_rss_bytes": {}}
    rss = results["peak_rss_bytes"]
    state = None
    try:
        # ---- trainer: samples/s of the training loop (engine build reported separately)
        for ranks in sorted({1, a.ranks}):
            c = cfg_for(ranks)
            group = ActorGroup(TrainerWorker, name=f"bench-trainer{ranks}",
                               resources=c.resources.trainer, init_kwargs=dict(cfg=c))
            try:
                addr, port = ray.get(group.actors[0].get_master_addr_port.remote())
                ray.get(group.call("init_distributed", master_addr=addr, master_port=port))
                m = ray.get(group.call("train", train_data, round=0))[0]
                if state is None:
                    state = ray.get(group.actors[0].adapter_state.remote())
                rss[f"trainer ({ranks} rank)"] = max(
                    r["peak_rss_bytes"] for r in ray.get(group.call("peak_rss")))
            finally:
                group.shutdown()
            results[f"train_{ranks}rank"] = {
                "samples_per_s": m["samples"] / m["loop_seconds"], "samples": m["samples"],
                "steps": m["steps"], "loop_seconds": m["loop_seconds"],
                "engine_build_seconds": m["seconds"] - m["loop_seconds"],
                "micro_per_rank": c.student.micro_batch_size, "loss_first_epoch": m["loss_first_epoch"]}
            print(f"trainer {ranks} rank(s): {results[f'train_{ranks}rank']['samples_per_s']:.2f} "
                  f"samples/s ({m['samples']} samples, {m['steps']} steps, "
                  f"{m['loop_seconds']:.1f} s loop)", flush=True)

        # ---- scorers: HF S=1 and S=2, vLLM S=1; same items, same adapter, one after the other
        ref = ray.put(state)
        adapter_bytes = sum(t.numel() * t.element_size() for t in state.values())
        outs = {}
        # vllm: the adapter as student.vllm.adapter=auto serves it (merged in place on CPU);
        # vllm_lora_request: vLLM's LoRA path, for the comparison
        # vllm_bf16: the engine's weights in bfloat16 (student.dtype bf16-true; the adapter is
        # merged into them), against vllm's fp32 on a CPU (issue 28)
        for path, shards in [("hf", 1), ("hf", 2), ("vllm", 1), ("vllm_lora_request", 1),
                             ("vllm_bf16", 1)]:
            if path.split("_")[0] not in paths or (path == "vllm_bf16" and path not in paths):
                continue
            c = cfg.model_copy(deep=True)
            c.student.inference = path.split("_")[0]
            if path == "vllm_lora_request":
                c.student.vllm.adapter = "lora_request"
            if path == "vllm_bf16":
                c.student.dtype = "bf16-true"
            t0 = time.perf_counter()
            group = ActorGroup(ScorerWorker, name=f"bench-scorer-{path}{shards}",
                               resources=ActorResources(num_workers=shards, num_cpus=a.num_cpus,
                                                        num_gpus=a.num_gpus),
                               init_kwargs=dict(cfg=c, batch_size=a.score_batch))
            try:
                full_bytes = ray.get(group.call("weight_bytes"))[0]  # also waits for start-up
                start_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                ray.get(group.call("load_adapter", ref))
                sync_s = time.perf_counter() - t0
                group.gather_sharded("score", warm_items[:shards], needs=needs)  # warm-up
                t0 = time.perf_counter()
                rows = group.gather_sharded("score", score_items, needs=needs)
                score_s = time.perf_counter() - t0
                learn_s = None
                if shards == 1 and path in ("hf", "vllm"):  # learnability's n sampled answers
                    t0 = time.perf_counter()
                    group.gather_sharded("score", score_items, needs=["pass_rate"])
                    learn_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                completions = group.gather_sharded("generate", eval_items)
                eval_s = time.perf_counter() - t0
                peak = [r["peak_rss_bytes"] for r in ray.get(group.call("peak_rss"))]
            finally:
                group.shutdown()
            if shards == 1:
                rss[f"scorer {path}"] = max(peak)
            outs[(path, shards)] = (rows, completions)
            correct = [task.check_completion(e, t) for e, t in zip(test, completions)]
            results[f"score_{path}_S{shards}"] = {
                "examples_per_s": len(rows) / score_s, "seconds": score_s, "examples": len(rows),
                "eval_examples_per_s": len(completions) / eval_s, "eval_seconds": eval_s,
                "eval_examples": len(completions), "accuracy": sum(correct) / max(1, len(correct)),
                "start_seconds": start_s, "adapter_load_seconds": sync_s,
                # strategy=learnability: n sampled answers per example (selection.learnability)
                "learnability_seconds": learn_s, "learnability_n": cfg.selection.learnability.n,
                "learnability_vs_needs": None if learn_s is None else learn_s / score_s}
            print(f"scoring {path} S={shards}: {len(rows) / score_s:.2f} examples/s ({len(rows)} in "
                  f"{score_s:.1f} s); evaluation {len(completions) / eval_s:.2f} examples/s; "
                  f"start {start_s:.1f} s" + ("" if learn_s is None else
                  f"; learnability (n={cfg.selection.learnability.n} sampled answers): "
                  f"{learn_s:.1f} s = x{learn_s / score_s:.2f} the {'+'.join(needs)} score"),
                  flush=True)

        def same(x, y) -> dict:
            (rx, cx), (ry, cy) = outs[x], outs[y]
            return {"same_answers": [r["answer_text"] for r in rx] == [r["answer_text"] for r in ry],
                    "same_completions": cx == cy,
                    "max_abs_loss_diff": max((abs(p["loss"] - q["loss"]) for p, q in zip(rx, ry)
                                              if "loss" in p), default=None)}

        if ("hf", 2) in outs:
            results["score_S2_equals_S1"] = same(("hf", 1), ("hf", 2))
        if ("vllm_lora_request", 1) in outs:
            m, r = results["score_vllm_S1"], results["score_vllm_lora_request_S1"]
            results["merge_vs_lora_request"] = {
                **same(("vllm", 1), ("vllm_lora_request", 1)),
                "score_ratio": m["examples_per_s"] / r["examples_per_s"],
                "eval_ratio": m["eval_examples_per_s"] / r["eval_examples_per_s"]}
            print(f"vLLM adapter merged / LoRARequest: scoring "
                  f"x{results['merge_vs_lora_request']['score_ratio']:.2f}, evaluation "
                  f"x{results['merge_vs_lora_request']['eval_ratio']:.2f}", flush=True)
        if ("vllm", 1) in outs and ("hf", 1) in outs:
            h, v = results["score_hf_S1"], results["score_vllm_S1"]
            results["vllm_vs_hf"] = {
                **same(("hf", 1), ("vllm", 1)),
                "score_ratio": v["examples_per_s"] / h["examples_per_s"],
                "eval_ratio": v["eval_examples_per_s"] / h["eval_examples_per_s"],
                "score_and_eval_ratio": (h["seconds"] + h["eval_seconds"])
                / (v["seconds"] + v["eval_seconds"]),
                # what a loop round pays: take the new adapter, score the pool, evaluate
                "round_ratio": (h["adapter_load_seconds"] + h["seconds"] + h["eval_seconds"])
                / (v["adapter_load_seconds"] + v["seconds"] + v["eval_seconds"])}
            print(f"vLLM / HF: scoring x{results['vllm_vs_hf']['score_ratio']:.2f}, evaluation "
                  f"x{results['vllm_vs_hf']['eval_ratio']:.2f}, same answers "
                  f"{results['vllm_vs_hf']['same_answers']}", flush=True)
        if ("vllm_bf16", 1) in outs and ("vllm", 1) in outs:
            results["vllm_bf16_vs_fp32"] = precision_agreement(
                outs[("vllm", 1)], outs[("vllm_bf16", 1)],
                results["score_vllm_S1"], results["score_vllm_bf16_S1"])
            b = results["vllm_bf16_vs_fp32"]
            print(f"vLLM bf16 / fp32: scoring x{b['score_ratio']:.2f}, evaluation "
                  f"x{b['eval_ratio']:.2f}; identical greedy answers {b['same_answer_share']:.2f} "
                  f"(scored) and {b['same_completion_share']:.2f} (evaluation); loss Pearson "
                  f"{b['loss_pearson']:.4f}, Spearman {b['loss_spearman']:.4f}; accuracy "
                  f"{b['accuracy_fp32']:.3f} vs {b['accuracy_bf16']:.3f}", flush=True)
        results["sync"] = {"adapter_bytes": adapter_bytes, "full_weight_bytes": full_bytes,
                           "ratio": adapter_bytes / full_bytes}
        print(f"sync: adapter {adapter_bytes / 2**20:.2f} MiB vs full weights "
              f"{full_bytes / 2**20:.1f} MiB (x{full_bytes / adapter_bytes:.0f} less)")
    finally:
        ray.shutdown()
    write_result(a.out, results)


if __name__ == "__main__":
    main()
