"""`activesyn make-teacher`: a small LLM teacher that can do the job, made with this project's stack.

    activesyn make-teacher jobs/llm-teacher-cpu.yaml --name smollm2-arith-teacher
    # then, in any run config:  teacher: {engine: vllm, model: smollm2-arith-teacher}

Untrained, SmolLM2-135M-Instruct parses 0 of 16 generate replies (docs/reliability.md): it does not
follow the `Question: ... Answer: ... #### X` format. This command teaches it that format, and to
keep the seed's structure, from the seed-conditioned procedural teacher's samples:

  1. pairs: seeds drawn from the config's task with their own generator seed (run seed +
     MAKE_SEED_OFFSET, so not a run's seed pool or test split); the prompt is the config's generate
     prompt for the seed, wrapped in the base model's chat template exactly as the vllm/hf engines
     feed it (engines/base.prompt_ids); the target is the sample the procedural teacher writes for
     that seed (`generate_like(like="seed")`, `format_sample`) + eos: the loss is on the target only;
  2. train: a LoRA adapter on the frozen base, with the student's DeepSpeed trainer
     (student/trainer.py TrainerWorker ranks as Ray actors, resources.trainer of the config);
  3. merge + publish: the adapter merged into the base, saved with the tokenizer (chat template
     included) as a model folder in the model cache (models.cache_model_dir), so `teacher.model:
     NAME` loads it in every engine like any model; make_teacher.json in that folder keeps the
     settings, training losses and measurements;
  4. measure: on held-out seeds (never trained on), through the real teacher path (TeacherPool,
     the vllm engine by default, teacher.verify on, the config's temperature): parse rate, share
     keeping the seed's structure (tasks/expression.signature), share with a right answer (the
     task's verifier), teacher tokens per kept sample, replies cut off at max_new_tokens.

The made teacher is trained on problems from the task's own generators; a run decontaminates its
samples against its held-out splits as for any teacher. On a cluster, the folder must exist on
every node that runs a teacher replica (or give `teacher.model` as a shared path).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from activesyn_ray.config import BudgetConfig, LoraConfig, RunConfig, StudentConfig
from activesyn_ray.tasks import Example, build_task

MAKE_SEED_OFFSET = 2_000_003
"""make-teacher's seeds come from generator seed run seed + this (runs use seed and seed + 1,000,003)."""
INFO = "make_teacher.json"


class MakeTeacherConfig(BaseModel):
    """What `activesyn make-teacher` makes; the task, prompt, sampling and trainer resources come from
    the run config it is given."""
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Name the teacher is saved under in the model cache; `teacher.model: NAME` then loads it."""
    base: str = "smollm2-135m"
    """Model the teacher is finetuned from (any model spec, as student.model)."""
    train_seeds: int = Field(160, gt=0)
    """Training pairs: seeds drawn from the config's task, one procedural sample each."""
    eval_seeds: int = Field(64, gt=0)
    """Held-out seeds (never trained on) the made teacher is measured on."""
    epochs: int = Field(2, gt=0)
    """Passes over the training pairs."""
    lr: float = Field(2e-3, gt=0)
    """AdamW learning rate of the LoRA adapter (constant)."""
    lora: LoraConfig = Field(default_factory=lambda: LoraConfig(r=16, alpha=32))
    """The adapter that is trained, then merged into the base."""
    micro_batch_size: int = Field(8, gt=0)
    """Pairs per step per trainer rank."""
    max_seq_len: int = Field(384, gt=8)
    """Prompt + target tokens per pair (the generate prompt alone is ~150 SmolLM2 tokens)."""
    measure_engine: Literal["vllm", "hf"] = "vllm"
    """Teacher engine the held-out measurement runs through (vllm: what runs use on CPU and GPU)."""
    overwrite: bool = False
    """Replace a model of the same name already in the cache."""


# ------------------------------------------------------------------------------------- 1. pairs
def make_task(run_cfg: RunConfig, mk: MakeTeacherConfig):
    """The config's task, sized for make-teacher: (task, training seeds, held-out seeds), disjoint."""
    task_cfg = run_cfg.task.model_copy(update={"seed_size": mk.train_seeds,
                                               "test_size": mk.eval_seeds, "val_size": 0})
    task = build_task(task_cfg, seed=run_cfg.seed + MAKE_SEED_OFFSET)
    if not getattr(task, "has_generator", False):
        raise ValueError(f"make-teacher: task.kind {run_cfg.task.kind!r} has no generator to write "
                         f"the training targets (use task.kind: gym)")
    train, held_out = task.splits()
    return task, train, held_out


def training_pairs(run_cfg: RunConfig, task, seeds: list[Example], tok) -> list[dict]:
    """{"prompt_ids", "target"} per seed: the chat-wrapped generate prompt as the engines tokenize
    it, and the procedural teacher's sample for that seed in the format the pool parses."""
    from activesyn_ray.teacher.engines.base import prompt_ids, request_seed
    from activesyn_ray.teacher.engines.procedural import format_sample
    from activesyn_ray.teacher.prompts import Prompts

    prompts = Prompts(run_cfg.teacher)
    out = []
    for s in seeds:
        new = task.generate_like(s, seed=request_seed(run_cfg.seed, f"make-{s.id}"), like="seed")
        out.append({"prompt_ids": prompt_ids(tok, prompts.generate(s)),
                    "target": format_sample(new)})
    return out


# ------------------------------------------------------------------------------------- 2. train
def train_adapter(run_cfg: RunConfig, mk: MakeTeacherConfig, pairs: list[dict]
                  ) -> tuple[dict, dict[str, bytes]]:
    """(training metrics, the adapter folder as {file: bytes}) from TrainerWorker ranks."""
    import ray

    from activesyn_ray.actors import ActorGroup
    from activesyn_ray.student.trainer import TrainerWorker

    student = StudentConfig(model=mk.base, lora=mk.lora, epochs=mk.epochs, lr=mk.lr,
                            micro_batch_size=mk.micro_batch_size, max_seq_len=mk.max_seq_len,
                            inference="hf")
    cfg = run_cfg.model_copy(update={"student": student})
    res = run_cfg.resources
    group = ActorGroup(TrainerWorker, name="make-teacher trainer", resources=res.trainer,
                       init_kwargs=dict(cfg=cfg), placement_timeout_s=res.placement_timeout_s,
                       collective=True, call_timeout_s=None, max_restarts=1)

    def rendezvous(ranks: list[int]) -> None:  # as StudentPool: rank 0 names the address
        addr, port = group.gather("get_master_addr_port", ranks=[0])[0]
        group.gather("init_distributed", master_addr=addr, master_port=port)

    group.setup = rendezvous
    try:
        group.set_up()
        data = ray.put(pairs)
        metrics, files = group.retry(lambda: (group.gather("train", data, round=0)[0],
                                              group.gather("adapter_files")[0]))
    finally:
        group.shutdown()
    return metrics, files


@contextmanager
def elapsed_ticker(what: str, every_s: float = 1.0):
    """A terminal line `what [elapsed]` redrawn every second while the block runs: training is one
    remote call (minutes on a CPU) with no per-step report to draw a bar from. Off when stderr is
    not a terminal (tqdm's disable=None), so pipes and logs get only the log lines."""
    import threading

    from tqdm import tqdm

    bar = tqdm(total=None, bar_format=what + " [{elapsed}]", disable=None, leave=False)
    stop = threading.Event()

    def tick():
        while not stop.wait(every_s):
            bar.refresh()

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.close()


# ---------------------------------------------------------------------------- 3. merge + publish
def merge_and_publish(mk: MakeTeacherConfig, adapter_files: dict[str, bytes], info: dict) -> Path:
    """Base + adapter merged into one model folder, renamed into the cache in one step."""
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from activesyn_ray.models import cache_model_dir, resolve_model

    dest = cache_model_dir(mk.name)
    base_dir = resolve_model(mk.base)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="teacher-adapter-") as adapter:
        for name, data in adapter_files.items():
            (Path(adapter) / name).write_bytes(data)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
    (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


# ----------------------------------------------------------------------------------- 4. measure
def keeps_structure(seed_question: str, sample_question: str) -> bool:
    """The sample's expression has the seed's signature (terms, operators, digit counts, signs,
    carries/borrows: tasks/expression.py)."""
    from activesyn_ray.tasks import expression

    a, b = expression.find(seed_question), expression.find(sample_question)
    return a is not None and b is not None and expression.signature(*a) == expression.signature(*b)


def quality(records: list[dict], seeds: list[Example], *, max_new_tokens: int) -> dict:
    """What a teacher's replies (TeacherPool records, teacher.verify on) are worth, per reply."""
    from activesyn_ray.decontaminate import normalize

    by_id = {s.id: s for s in seeds}
    n = len(records)
    parsed = [r for r in records if r["parsed"]]
    right = [r for r in parsed if not r.get("rejected")]
    structure = [r for r in parsed
                 if keeps_structure(by_id[r["seed_id"]].question, r["example"]["question"])]
    copies = [r for r in parsed if normalize(r["example"]["question"])
              == normalize(by_id[r["seed_id"]].question)]
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in records)

    def share(k: int) -> float | None:
        return round(k / n, 4) if n else None

    return {"replies": n, "parsed": len(parsed), "parse_rate": share(len(parsed)),
            "keeps_structure": len(structure), "structure_rate": share(len(structure)),
            "right_answer": len(right), "right_rate": share(len(right)),
            "copies_of_seed": len(copies),
            "cut_off": sum(r["completion_tokens"] >= max_new_tokens for r in records),
            "teacher_tokens": tokens,
            "completion_tokens": sum(r["completion_tokens"] for r in records),
            "tokens_per_kept_sample": round(tokens / len(right), 1) if right else None}


def measure(run_cfg: RunConfig, task, seeds: list[Example], *, model: str,
            engine: str = "vllm", warm: list[Example] = ()) -> dict:
    """`model` as a teacher on `seeds`, through a real TeacherPool (one replica, verify on). warm:
    seeds for an untimed first call (first-call allocations; other prompts, so vLLM's prefix cache
    serves nothing of the timed call). The engine start is timed apart (start_s)."""
    from activesyn_ray.budget import Ledger
    from activesyn_ray.teacher.pool import TeacherPool

    # one call with every seed (vLLM batches it whole); a measurement, not a fault test: the hung-
    # replica timeout only has to stay above one slow call on a loaded box
    # a measurement of the teacher (its replies and their speed): never served from the cache
    teacher = run_cfg.teacher.model_copy(update={"engine": engine, "model": model, "verify": True,
                                                 "replicas": 1, "micro_batch_size": len(seeds),
                                                 "request_timeout_s": 3600,
                                                 "cache": run_cfg.teacher.cache.model_copy(
                                                     update={"enabled": False})})
    cfg = run_cfg.model_copy(update={"teacher": teacher,
                                     "budget": BudgetConfig(samples=len(seeds) + 4)})
    t0 = time.perf_counter()
    pool = TeacherPool(cfg=cfg, task=task, ledger=Ledger(max_samples=len(seeds) + 4))
    start_s = time.perf_counter() - t0
    try:
        if warm:
            pool.generate(list(warm)[:4], iteration=-1)
        t0 = time.perf_counter()
        records = pool.generate(seeds, iteration=0)
        gen_s = time.perf_counter() - t0
    finally:
        pool.shutdown()
    q = quality(records, seeds, max_new_tokens=teacher.max_new_tokens)
    return {**q, "model": model, "engine": engine, "temperature": teacher.temperature,
            "start_s": round(start_s, 1), "generate_s": round(gen_s, 1),
            "completion_tokens_per_s": round(q["completion_tokens"] / gen_s, 1),
            "kept_samples_per_s": round(q["right_answer"] / gen_s, 3),
            "examples": [{k: r.get(k) for k in ("seed_id", "parsed", "rejected", "raw")}
                         | {"question": (r["example"] or {}).get("question"),
                            "answer": (r["example"] or {}).get("answer")} for r in records[:8]]}


# ------------------------------------------------------------------------------------ the command
def make_teacher(run_cfg: RunConfig, mk: MakeTeacherConfig, *, log=print) -> dict:
    """Steps 1-4 (module docstring); returns what make_teacher.json holds."""
    from activesyn_ray.models import cache_model_dir, resolve_model
    from activesyn_ray.runtime import init_ray
    from activesyn_ray.atomic_files import atomic_write_json
    from activesyn_ray.teacher.engines.base import load_tokenizer

    dest = cache_model_dir(mk.name)
    if (dest / "config.json").exists() and not mk.overwrite:
        raise FileExistsError(f"model {mk.name!r} already exists in the cache ({dest}); pick another "
                              f"--name or pass --overwrite")
    resolve_model(mk.base)  # a missing or broken base fails here, before any actor starts
    task, train, held_out = make_task(run_cfg, mk)
    pairs = training_pairs(run_cfg, task, train, load_tokenizer(mk.base))
    lengths = [len(p["prompt_ids"]) for p in pairs]
    log(f"{len(pairs)} training pairs (prompt {min(lengths)}-{max(lengths)} tokens), "
        f"{len(held_out)} held-out seeds; training {mk.base} + LoRA r={mk.lora.r}, "
        f"{mk.epochs} epoch(s)")
    init_ray(run_cfg.resources, log_to_driver=False)  # actors' library chatter off the console
    t0 = time.perf_counter()
    ranks = run_cfg.resources.trainer.num_workers
    steps = mk.epochs * -(-len(pairs) // (mk.micro_batch_size * ranks))
    with elapsed_ticker(f"training: {steps} steps on {ranks} rank(s)"):
        metrics, files = train_adapter(run_cfg, mk, pairs)
    train_s = time.perf_counter() - t0
    log(f"trained in {train_s:.0f} s: loss {metrics['loss_first_epoch']:.3f} (first epoch) -> "
        f"{metrics['loss_last_epoch']:.3f} (last), {metrics['steps']} steps")
    info = {"name": mk.name, "made": time.strftime("%Y-%m-%d %H:%M:%S"),
            "settings": json.loads(mk.model_dump_json()),
            "task": json.loads(run_cfg.task.model_dump_json()),
            "generate_prompt": run_cfg.teacher.generate_prompt or "packaged prompts/generate.txt",
            "seed": run_cfg.seed, "train_pairs": len(pairs),
            "training": {k: metrics[k] for k in ("loss_first_epoch", "loss_last_epoch", "steps",
                                                 "samples")} | {"seconds": round(train_s, 1)},
            "cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    dest = merge_and_publish(mk, files, info)
    log(f"saved {dest} (teacher.model: {mk.name}); measuring on {len(held_out)} held-out seeds "
        f"with the {mk.measure_engine} engine")
    info["held_out"] = measure(run_cfg, task, held_out, model=mk.name, engine=mk.measure_engine)
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    atomic_write_json(dest / INFO, info)
    return {**info, "folder": str(dest)}
