"""How close the trainer runs to what the hardware can do, side by side in ONE run:

    achieved    useful FLOPs / training-loop seconds, where useful FLOPs are those on REAL tokens
                (no padding): forward + backward through every block for each token, the output
                head only where the loss needs a logit (a labelled position), the LoRA weights'
                own gradients; a frozen weight's backward is its input gradient only (2x, not 4x).
                Attention scores (under 1% at these lengths) are left out.
    peak        a plain torch matmul with the trainer's threads, in the trainer's dtype, measured
                in a Ray actor sized like the trainer rank right before and after the timed
                training (sustained: the load the trainer saw), and its best single call (burst)
    utilisation achieved / peak (on a GPU: MFU; --peak-tflops adds the datasheet figure)
    padding     share of the positions the blocks computed that were padding

Variants train the same examples from the same fresh adapter, alternating, `--repeat` times each
(medians). A variant is `<layout>[-<precision>]`: layout `padded` (student.packing: false:
right-padded rows, logits everywhere) or `packed` (the default); precision (student.dtype)
`float32`, `bf16-mixed` or `bf16-true` (`packed-bf16`, the old name, is packed-bf16-true), left out:
float32 on a CPU, auto on a GPU. By default: padded, packed and, where the CPU has bf16 arithmetic
(AVX-512 BF16 / AMX), packed-bf16-mixed and packed-bf16-true, each against fp32 packed: a bf16
precision pays if it is faster AND keeps the first-epoch loss within 1% of fp32's. The matmul probe
always measures fp32 AND bf16, so the bf16 rate is printed next to fp32's with the CPU's bf16 flags,
also where the bf16 variants do not run (on a CPU without bf16 units, bf16-true runs torch's
bf16 fallback at ~10x fp32's time, and bf16-mixed is emulated with fp32 kernels: neither speed
says anything about bf16; `benchmarks/bf16_emulation.py` checks the emulation's numbers).

    python -m activesyn_ray.benchmarks.trainer_efficiency --out trainer.json     # SmolLM2-135M + LoRA
    python -m activesyn_ray.benchmarks.trainer_efficiency --num-gpus 1 --peak-tflops 989
    python -m activesyn_ray.benchmarks.trainer_efficiency --variants packed --profile   # + where the time goes
"""

from __future__ import annotations

import argparse
import os
import statistics

from activesyn_ray.benchmarks import write_result

# The pretrained grid's task (jobs/pretrained-cpu.yaml), inlined so the bench needs no checkout.
LEVELS = [{"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2, "operators": ["+"],
           "allow_parentheses": False, "allow_negation": False},
          {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2, "operators": ["+", "-"],
           "allow_parentheses": False, "allow_negation": False},
          {"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2, "operators": ["+", "-"],
           "allow_parentheses": False, "allow_negation": False}]
LOSS_TOLERANCE = 0.01  # a variant must keep the first-epoch loss within 1% of the baseline's
BF16_MODES = ("bf16-mixed", "bf16-true")  # the student.dtype values compared with fp32
# variant names from before bf16-mixed
OLD_NAMES = {"packed-bf16": "packed-bf16-true", "padded-bf16": "padded-bf16-true"}


def arithmetic_examples(n: int) -> list[dict]:
    """The first n seeds of the bench's task as training examples ({"question", "target"}): the
    same ones on every call and every machine."""
    from activesyn_ray.config import config_from_dict
    from activesyn_ray.tasks import build_task

    cfg = config_from_dict({"task": {"kind": "gym", "name": "basic_arithmetic", "levels": LEVELS,
                                     "seed_size": n, "test_size": 8}})
    task = build_task(cfg.task, seed=0)
    seeds, _ = task.splits()
    return [{"question": e.question, "target": task.target(e)} for e in seeds[:n]]


def lora_student(*, model: str, dtype: str, epochs: int, micro: int, max_seq_len: int = 64):
    """A run config for the bench's student: `model` + LoRA r 8, lr 1e-3."""
    from activesyn_ray.config import config_from_dict

    return config_from_dict({"student": {"model": model, "lora": {"r": 8, "alpha": 16},
                                         "epochs": epochs, "lr": 1e-3, "micro_batch_size": micro,
                                         "max_seq_len": max_seq_len, "dtype": dtype}})


def in_process_rank(cfg):
    """One TrainerWorker in this process, alone in a gloo group (no Ray): for benchmarks that
    hold several engines of one rank side by side."""
    from activesyn_ray.student.trainer import TrainerWorker

    worker = TrainerWorker(rank=0, world_size=1, num_cpus=1, cfg=cfg)
    worker.init_distributed(master_addr="127.0.0.1", master_port=29500 + os.getpid() % 1000)
    return worker


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=64, help="training examples per timed run")
    p.add_argument("--micro", type=int, default=8, help="micro batch (pretrained-cpu: 8)")
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2, help="timed runs per variant (medians)")
    p.add_argument("--variants", default="auto",
                   help="comma list of <padded|packed>[-<float32|bf16-mixed|bf16-true>]; auto: "
                        "padded, packed, and the bf16 ones where the CPU has bf16 arithmetic")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs of the trainer rank")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs of the trainer rank")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the accelerator's datasheet peak in the trainer's dtype (adds MFU vs it)")
    p.add_argument("--profile", action="store_true",
                   help="then one more training call per variant under torch.profiler: where its "
                        "time goes (GEMMs, LoRA, attention, casts, optimizer, the rest)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def param_counts(model: str, lora) -> dict[str, int]:
    """Weights the FLOPs are counted over, from the model's config on the meta device (nothing
    loaded): linear layers of the blocks, the output head, the LoRA matrices."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from activesyn_ray.models import resolve_model
    from activesyn_ray.student.trainer import peft_lora_config

    config = AutoConfig.from_pretrained(resolve_model(model))
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config)
        head = net.get_output_embeddings()
        if lora is not None:
            from peft import get_peft_model

            net = get_peft_model(net, peft_lora_config(lora))
    linear = [(n, m) for n, m in net.named_modules()
              if isinstance(m, torch.nn.Linear) and m is not head]
    return {"blocks": sum(m.weight.numel() for n, m in linear if "lora_" not in n),
            "lora": sum(m.weight.numel() for n, m in linear if "lora_" in n),
            "head": head.weight.numel()}


def train_flops(counts: dict[str, int], *, tokens: int, head_positions: int, lora: bool) -> float:
    """Forward 2 FLOPs per weight per token; backward 2 more for the input gradient, and 2 more
    for the weight gradient of trained weights only."""
    if lora:
        return (4 * counts["blocks"] + 6 * counts["lora"]) * tokens + 4 * counts["head"] * head_positions
    return 6 * counts["blocks"] * tokens + 6 * counts["head"] * head_positions


def bf16_cpu() -> bool:
    """A CPU with bf16 arithmetic (on a GPU the trainer is bf16 already: student.dtype auto)."""
    from activesyn_ray.devices import probe

    return probe(cuda=False).bf16_units


def split_variant(variant: str, *, gpu: bool) -> tuple[str, str]:
    """`packed-bf16-mixed` -> ("packed", "bf16-mixed"); no precision: float32 (CPU) / auto (GPU)."""
    layout, _, precision = OLD_NAMES.get(variant, variant).partition("-")
    if layout not in ("padded", "packed") or precision not in ("", "float32", *BF16_MODES):
        raise SystemExit(f"--variants: unknown variant {variant!r} (<padded|packed>"
                         f"[-<float32|bf16-mixed|bf16-true>])")
    return layout, precision or ("auto" if gpu else "float32")


def default_variants(*, gpu: bool) -> list[str]:
    bf16 = not gpu and bf16_cpu()  # without bf16 units their speed means nothing: not by default
    return ["padded", "packed"] + ([f"packed-{m}" for m in BF16_MODES] if bf16 else [])


def matmul_dtype(precision: str) -> str:
    """The matmul a precision's trainer runs (the peak its utilisation is measured against)."""
    return "float32" if precision == "float32" else "bfloat16"


def matmul_rates(peaks: list[dict]) -> dict[str, dict[str, float]]:
    """Each dtype's matmul over all probes: mean sustained rate, best single call (GFLOP/s)."""
    return {dt: {"sustained": round(statistics.mean(p[dt]["gflops_sustained"] for p in peaks), 2),
                 "burst": round(max(p[dt]["gflops_best"] for p in peaks), 2)} for dt in peaks[0]}


def bf16_verdicts(rows: dict[str, dict]) -> dict[str, dict]:
    """Each bf16 precision that ran against fp32 (packed preferred): faster, and the first-epoch
    loss within LOSS_TOLERANCE of fp32's?"""
    def pick(precision):
        found = [v for v, r in rows.items() if r["precision"] == precision]
        return next((v for v in found if rows[v]["packed"]), found[0] if found else None)

    base, out = pick("float32"), {}
    for mode in BF16_MODES:
        v = pick(mode)
        if base is None or v is None:
            continue
        b, f = rows[v], rows[base]
        loss = b["loss_first_epoch"] / f["loss_first_epoch"] - 1
        faster, close = b["loop_seconds"] < f["loop_seconds"], abs(loss) <= LOSS_TOLERANCE
        out[mode] = {"variant": v, "baseline": base,
                     "samples_per_s": [f["samples_per_s"], b["samples_per_s"]],
                     "speedup": round(f["loop_seconds"] / b["loop_seconds"], 3),
                     "loss_vs_fp32": round(loss, 6), "faster": faster,
                     "within_loss_tolerance": close, "use": faster and close}
    return out


def precision_lines(r: dict, *, gpu: bool, threads: int) -> list[str]:
    """fp32 vs bf16: the matmul rates with the bf16 flags, then each bf16 precision's verdict (or
    why it did not run)."""
    from activesyn_ray.devices import BF16_CPU_FLAGS

    f, b = r["matmul"]["float32"], r["matmul"]["bfloat16"]
    where = f"GPU {r['machine'].get('gpu')}" if gpu else "CPU " + ", ".join(
        f"{flag} {'yes' if r['machine']['isa'].get(flag) else 'no'}" for flag in BF16_CPU_FLAGS)
    ratio = b["sustained"] / f["sustained"]
    lines = [f"trainer matmul fp32 vs bf16 ({threads} thread(s), alongside): "
             f"{f['sustained']:.1f} vs {b['sustained']:.1f} GFLOP/s sustained (bf16 x{ratio:.2f}), "
             f"best call {f['burst']:.1f} vs {b['burst']:.1f}; {where}"]
    for mode in BF16_MODES:
        if bv := r["bf16_verdicts"].get(mode):
            fs, bs = bv["samples_per_s"]
            lines.append(f"trainer {mode} vs fp32 ({bv['variant']} vs {bv['baseline']}): "
                         f"{bs:.2f} vs {fs:.2f} samples/s (x{bv['speedup']:.2f}), first-epoch loss "
                         f"{100 * bv['loss_vs_fp32']:+.2f}%: "
                         f"{'use ' + mode if bv['use'] else 'keep fp32'} (faster and within "
                         f"{100 * LOSS_TOLERANCE:.0f}%?)")
        elif not gpu:
            units = any(r["machine"]["isa"].get(flag) for flag in BF16_CPU_FLAGS)
            why = "no fp32 or no such variant in --variants" if units else \
                f"this CPU has no {'/'.join(BF16_CPU_FLAGS)}: bf16 is emulated, its speed means nothing"
            lines.append(f"trainer {mode} vs fp32: not run ({why}; `--variants "
                         f"packed,packed-{mode}` runs it)")
    return lines


def main(argv=None) -> dict:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from activesyn_ray.actors import ActorGroup
    from activesyn_ray.benchmarks.machine import describe, matmul_gflops
    from activesyn_ray.config import config_from_dict
    from activesyn_ray.runtime import worker_env
    from activesyn_ray.student.trainer import TrainerWorker
    from activesyn_ray.tasks import build_task

    gpu = a.num_gpus > 0
    variants = a.variants.split(",") if a.variants != "auto" else default_variants(gpu=gpu)
    split = {v: split_variant(v, gpu=gpu) for v in variants}
    # every variant's rank and the matmul probe stay alive side by side: on a GPU they share it
    # (they never compute at the same time: the runs alternate)
    share = a.num_gpus / (len(variants) + 1) if gpu else 0

    def cfg_for(variant: str):
        return config_from_dict({
            "task": {"kind": "gym", "name": "basic_arithmetic", "levels": LEVELS,
                     "seed_size": a.examples + 8, "test_size": 8},
            "student": {"model": a.model, "lora": {"r": 8, "alpha": 16}, "epochs": a.epochs,
                        "lr": 1e-3, "micro_batch_size": a.micro, "max_seq_len": a.max_seq_len,
                        "packing": split[variant][0] == "packed",
                        "dtype": split[variant][1]},
            "resources": {"trainer": {"num_workers": 1, "num_cpus": a.num_cpus,
                                      "num_gpus": share}},
        })

    cfg = cfg_for(variants[0])
    task = build_task(cfg.task, seed=0)
    seeds, _ = task.splits()
    data = [{"question": e.question, "target": task.target(e)} for e in seeds]
    warm, timed = data[:8], data[8:8 + a.examples]
    counts = param_counts(a.model, cfg.student.lora)
    # every variant's rank and the probe are alive at once
    ray.init(address="local", num_cpus=max(4, int(a.num_cpus) * (len(variants) + 1)),
             include_dashboard=False,
             runtime_env={"env_vars": worker_env()}, log_to_driver=False)
    device = "cuda" if gpu else "cpu"
    probe = ray.remote(num_cpus=a.num_cpus, num_gpus=share)(matmul_gflops)
    dtypes = ("float32", "bfloat16")  # both always: the bf16 rate beside fp32's, on any box

    def peak() -> dict[str, dict]:
        return {dt: ray.get(probe.remote(dtype=dt, threads=max(1, int(a.num_cpus)), device=device,
                                         sizes=(4096, 8192) if gpu else (512, 1024),
                                         seconds=2.0)) for dt in dtypes}

    # the variants' order is lost in the JSON (sorted keys): name the baseline
    results: dict = {"model": a.model, "args": vars(a), "machine": describe(matmul=False),
                     "variant_order": variants, "baseline": variants[0],
                     "param_counts": counts, "peaks": [], "variants": {}}
    groups = {}
    try:
        for v in variants:
            c = cfg_for(v)
            g = ActorGroup(TrainerWorker, name=f"bench-{v}", resources=c.resources.trainer,
                           init_kwargs=dict(cfg=c))
            addr, port = ray.get(g.actors[0].get_master_addr_port.remote())
            ray.get(g.call("init_distributed", master_addr=addr, master_port=port))
            ray.get(g.call("train", warm, round=0))  # engine build, first calls, packing check
            groups[v] = g
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        results["peaks"].append(peak())
        for _ in range(a.repeat):
            for v in variants:  # alternating: every variant sees the same spread of load
                runs[v].append(ray.get(groups[v].call("train", timed, round=0))[0])
            results["peaks"].append(peak())
        if a.profile:
            from activesyn_ray.benchmarks.step_profile import profile_train

            profiles = {v: ray.get(groups[v].actors[0].__ray_call__.remote(profile_train, timed))
                        for v in variants}
    finally:
        for g in groups.values():
            g.shutdown()
        ray.shutdown()

    base_loss = statistics.median(r["loss_first_epoch"] for r in runs[variants[0]])
    for v in variants:
        rs = runs[v]
        precision = rs[0]["precision"]  # as the rank resolved it (auto: its probe)
        dt = matmul_dtype(precision)
        sustained = statistics.mean(p[dt]["gflops_sustained"] for p in results["peaks"])
        burst = max(p[dt]["gflops_best"] for p in results["peaks"])
        loop_s = statistics.median(r["loop_seconds"] for r in rs)
        r0 = rs[0]  # the counts are the same in every run (same examples, same batches)
        useful = train_flops(counts, tokens=r0["tokens"], head_positions=r0["label_tokens"],
                             lora=cfg.student.lora is not None)
        computed = train_flops(counts, tokens=r0["positions"],
                               head_positions=r0["label_tokens"] if r0["packed"] else r0["positions"],
                               lora=cfg.student.lora is not None)
        achieved = useful / loop_s / 1e9
        loss = statistics.median(r["loss_first_epoch"] for r in rs)
        row = {"dtype": dt, "precision": precision, "packed": r0["packed"],
               "loop_seconds": round(loop_s, 3),
               "loop_seconds_all": [round(r["loop_seconds"], 3) for r in rs],
               "samples_per_s": round(r0["samples"] / loop_s, 3),
               "tokens": r0["tokens"], "positions": r0["positions"], "label_tokens": r0["label_tokens"],
               "padding_share": round(1 - r0["tokens"] / r0["positions"], 4),
               "useful_gflop": round(useful / 1e9, 2), "computed_gflop": round(computed / 1e9, 2),
               "achieved_gflops": round(achieved, 2),
               "computed_gflops": round(computed / loop_s / 1e9, 2),
               "peak_sustained_gflops": round(sustained, 2), "peak_burst_gflops": round(burst, 2),
               "utilisation_vs_sustained": round(achieved / sustained, 4),
               "utilisation_vs_burst": round(achieved / burst, 4),
               "time_split_s": {k: round(statistics.median(r[k] for r in rs), 3)
                                for k in ("forward_s", "backward_s", "step_s")},
               "loss_first_epoch": loss,
               "loss_vs_baseline": round(loss / base_loss - 1, 6),
               "speedup_vs_baseline": None}
        if a.peak_tflops:
            row["mfu_vs_datasheet"] = round(achieved / (a.peak_tflops * 1e3), 4)
        results["variants"][v] = row
    base_s = results["variants"][variants[0]]["loop_seconds"]
    for v, row in results["variants"].items():
        row["speedup_vs_baseline"] = round(base_s / row["loop_seconds"], 3)
        row["within_loss_tolerance"] = abs(row["loss_vs_baseline"]) <= LOSS_TOLERANCE
        what = "MFU" if gpu else "utilisation"
        print(f"trainer {v}: {row['samples_per_s']:.2f} samples/s, {row['achieved_gflops']:.1f} "
              f"GFLOP/s on real tokens = {what} {100 * row['utilisation_vs_sustained']:.1f}% of the "
              f"{row['dtype']} matmul measured alongside ({row['peak_sustained_gflops']:.1f} GFLOP/s; "
              f"{100 * row['utilisation_vs_burst']:.1f}% of its burst {row['peak_burst_gflops']:.1f})"
              + (f", {100 * row['mfu_vs_datasheet']:.1f}% of the datasheet {a.peak_tflops} TFLOP/s"
                 if a.peak_tflops else "")
              + f"; padding {100 * row['padding_share']:.1f}%; x{row['speedup_vs_baseline']:.2f} vs "
              f"{variants[0]}; first-epoch loss {row['loss_first_epoch']:.4f} "
              f"({100 * row['loss_vs_baseline']:+.2f}%)", flush=True)
    if a.profile:
        from activesyn_ray.benchmarks.step_profile import profile_lines

        for v in variants:
            results["variants"][v]["profile"] = {k: x for k, x in profiles[v].items() if k != "train"}
            print("\n".join(profile_lines(v, profiles[v])), flush=True)
    results["matmul"] = matmul_rates(results["peaks"])
    results["bf16_verdicts"] = bf16_verdicts(results["variants"])
    for line in precision_lines(results, gpu=gpu, threads=max(1, int(a.num_cpus))):
        print(line, flush=True)
    write_result(a.out, results)
    return results


if __name__ == "__main__":
    main()
