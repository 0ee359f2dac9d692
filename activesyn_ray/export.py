"""`activesyn export RUN`: a run's synthetic set for the next training job, and its merged model.

    activesyn export runs/quickstart-20261123-101500                 # -> RUN/export/
    activesyn export RUN --out data/synth --merge                      # + a full HF model folder

    OUT/dataset/            `datasets` dataset (save_to_disk): datasets.load_from_disk(OUT/"dataset")
    OUT/synthetic.parquet   the same rows as one Parquet file
    OUT/sft/prompt_completion.jsonl   {"prompt", "completion"}: the student's own training text
    OUT/sft/messages.jsonl            {"messages": [user, assistant]}: the chat layout
                            both only the samples the student trained on (parsed, not contaminated),
                            answers in the task's format (reasoning, then `#### answer`); TRL's
                            SFTTrainer, and most finetuning tools, take either file as it is:
                            datasets.load_dataset("json", data_files=OUT/"sft/messages.jsonl")
    OUT/model/              with --merge: base model + RUN/checkpoints/final merged (PEFT
                            merge_and_unload), loadable with AutoModelForCausalLM.from_pretrained

One row per teacher sample (parsed or not), provenance as flat columns -- see COLUMNS.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa

from activesyn_ray import runstore
from activesyn_ray.tasks.base import Example, Task, stratum

# Column -> Arrow type. Explicit, so an all-null column (e.g. no sample_score) keeps its type and a
# dataset exported from a small run has the same schema as one from a large run.
COLUMNS = {
    "request_id": pa.string(),      # gen-<iteration>-<seed id>: unique per sample
    "question": pa.string(),        # null when the teacher's output did not parse
    "answer": pa.string(),
    "solution": pa.string(),
    "parsed": pa.bool_(),
    "raw": pa.string(),             # start of the teacher's text when it did not parse
    "rejected": pa.string(),        # why the task's verifier refused it (teacher.verify), else null
    "contaminated": pa.string(),    # how it matched a held-out question, else null
    "stratum": pa.string(),         # tasks.stratum() of the sample (else of its seed)
    "seed_id": pa.string(),
    "seed_question": pa.string(),
    "iteration": pa.int64(),
    "strategy": pa.string(),
    "seed_score": pa.float64(),     # the strategy's priority of the seed when it was chosen
    "sample_score": pa.float64(),   # the same score of the sample (scores.jsonl), if computed
    "teacher": pa.string(),         # engine
    "teacher_model": pa.string(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "cached": pa.bool_(),           # the reply came from the teacher cache (teacher.cache)
    "staleness": pa.int64(),        # adapters between the scores its seed was chosen by and the
                                    # newest (loop.pipeline: 1 from round 2 on; sync: 0)
}
SCHEMA = pa.schema(list(COLUMNS.items()))


def synthetic_rows(run_dir: str | Path) -> list[dict]:
    """The run's synthetic.jsonl as flat rows (COLUMNS), in generation order."""
    from activesyn_ray.config import load_config

    store = runstore.RunStore(run_dir)
    strategy = load_config(store.path(runstore.CONFIG)).selection.strategy
    seeds = {s["id"]: Example.from_dict(s) for s in store.read(runstore.SEEDS)}
    sample_scores = {r["request_id"]: r.get("sample_score") for r in store.read(runstore.SCORES)
                     if r.get("kind") == "synthetic"}
    rows = []
    for rec in store.read(runstore.SYNTHETIC):
        ex = Example.from_dict(rec["example"]) if rec.get("example") else None
        seed = seeds.get(rec["seed_id"].split("#")[0])  # `#n`: a static seed drawn again
        rows.append({
            "request_id": rec["request_id"],
            "question": ex.question if ex else None,
            "answer": ex.answer if ex else None,
            "solution": ex.solution if ex else None,
            "parsed": bool(rec.get("parsed")),
            "raw": rec.get("raw"),
            # never trained on: a user training on the export should drop these too
            "rejected": rec.get("rejected"),
            "contaminated": rec.get("contaminated"),
            "stratum": stratum(ex) if ex and stratum(ex) != "all" else
                       (stratum(seed) if seed else "all"),
            "seed_id": rec["seed_id"],
            "seed_question": seed.question if seed else None,
            "iteration": rec.get("iteration"),
            "strategy": strategy,
            "seed_score": rec.get("seed_score"),
            "sample_score": sample_scores.get(rec["request_id"]),
            "teacher": rec.get("engine"),
            "teacher_model": rec.get("model"),
            "prompt_tokens": rec.get("prompt_tokens"),
            "completion_tokens": rec.get("completion_tokens"),
            "cached": bool(rec.get("cached")),
            "staleness": rec.get("staleness", 0),
        })
    return rows


def sft_records(run_dir: str | Path) -> list[dict]:
    """The samples the student trained on (parsed, not contaminated) as {"prompt", "completion"}:
    the same prompt and target text the trainer uses (Task.prompt / Task.target), so the answer
    format (`#### answer`) is kept."""
    store = runstore.RunStore(run_dir)
    out = []
    for rec in store.read(runstore.SYNTHETIC):
        if not rec.get("parsed") or rec.get("contaminated") or not rec.get("example"):
            continue
        ex = Example.from_dict(rec["example"])
        out.append({"prompt": Task.prompt(ex.question), "completion": Task.target(ex),
                    "question": ex.question})
    return out


def write_sft(run_dir: str | Path, out: str | Path) -> dict:
    """OUT/sft/prompt_completion.jsonl and OUT/sft/messages.jsonl (TRL's standard prompt-completion
    and conversational layouts); returns their paths and `sft_rows`, the samples in each."""
    folder = Path(out) / "sft"
    folder.mkdir(parents=True, exist_ok=True)
    recs = sft_records(run_dir)
    layouts = {
        "prompt_completion": [{"prompt": r["prompt"], "completion": r["completion"]} for r in recs],
        # a chat template frames the turns itself: the user turn is the bare question, and the
        # assistant turn the target without the space that follows "Answer:" in the plain layout
        "messages": [{"messages": [{"role": "user", "content": r["question"]},
                                   {"role": "assistant", "content": r["completion"].lstrip()}]}
                     for r in recs],
    }
    paths: dict = {"sft_rows": len(recs)}
    for name, rows in layouts.items():
        paths[name] = folder / f"{name}.jsonl"
        runstore.write_jsonl(paths[name], rows)
    return paths


def export_dataset(run_dir: str | Path, out: str | Path) -> dict[str, Path]:
    """Write OUT/dataset (save_to_disk), OUT/synthetic.parquet and the two SFT layouts (OUT/sft/);
    returns their paths."""
    import datasets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(synthetic_rows(run_dir), schema=SCHEMA)
    ds = datasets.Dataset(table)
    dest = out / "dataset"
    tmp = out / f".dataset.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    parquet = out / "synthetic.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, str(parquet) + ".tmp")
    os.replace(str(parquet) + ".tmp", parquet)
    sft = write_sft(run_dir, out)
    return {"dataset": dest, "parquet": parquet, "rows": len(ds), **sft}


def merge_model(run_dir: str | Path, out: str | Path, checkpoint: str = "final") -> Path:
    """RUN/checkpoints/<checkpoint> merged into the run's base student model, saved as a full HF
    model folder (weights + tokenizer) at OUT/model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from activesyn_ray.config import load_config
    from activesyn_ray.models import resolve_model

    store = runstore.RunStore(run_dir)
    adapter = store.checkpoints / checkpoint
    if not adapter.exists():
        raise FileNotFoundError(f"{adapter}: no such checkpoint (the run has not finished? "
                                f"pick one of {sorted(p.name for p in store.checkpoints.glob('*'))})")
    dest = Path(out) / "model"
    tmp = Path(out) / f".model.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if (adapter / "adapter_config.json").exists():
        from peft import PeftModel

        base_dir = resolve_model(load_config(store.path(runstore.CONFIG)).student.model)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
    else:  # student.lora: null -- the checkpoint already is the full model
        shutil.copytree(adapter, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest
