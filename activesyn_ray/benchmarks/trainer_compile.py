"""torch.compile for the student's training step, measured side by side (not a setting).

One trainer rank in this process (no Ray; a 1-rank gloo group), two DeepSpeed engines of the same
fresh LoRA student: one eager, one through DeepSpeed's `engine.compile` (inductor, dynamic shapes:
packed rows differ in length). The same training call (the same examples and seeds) runs on each in
turn, `--repeat` times, so both engines train along the same path and each pair sees the same load.
Printed: the first compiled call (the compile itself), the eager and compiled seconds per call
(medians), their ratio, and the first-epoch loss of each engine's first call (same to float
rounding if the compiled step computes what the eager one does).

    python -m activesyn_ray.benchmarks.trainer_compile --out compile.json
"""

from __future__ import annotations

import argparse
import os
import statistics

from activesyn_ray.benchmarks import write_result
from activesyn_ray.benchmarks.trainer_efficiency import (arithmetic_examples, in_process_rank,
                                                         lora_student)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=32, help="training examples per call")
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="timed calls per engine, alternating")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from activesyn_ray.benchmarks.machine import describe

    data = arithmetic_examples(a.examples + 8)
    worker = in_process_rank(lora_student(model=a.model, dtype="float32", epochs=1, micro=a.micro,
                                          max_seq_len=a.max_seq_len))
    worker.train(data[:8], round=0)  # the packing check, first calls
    worker._continue_from = lambda start: None  # each engine continues its own training

    engines = {}
    for name in ("eager", "compiled"):
        worker.engine = None  # keep the other engine: _build_engine would destroy it
        worker._build_engine()
        engines[name] = worker.engine
    engines["compiled"].compile(compile_kwargs={"dynamic": True})
    calls: dict[str, list[dict]] = {"eager": [], "compiled": []}
    timed = data[8:8 + a.examples]
    for i in range(a.repeat + 1):  # call 0 of the compiled engine compiles
        for name in ("eager", "compiled"):
            worker.engine = engines[name]
            r = worker.train(timed, round=0)  # the compile runs in the first compiled forward
            calls[name].append(r)
            print(f"call {i} {name}: {r['loop_seconds']:.2f} s, first-epoch loss "
                  f"{r['loss_first_epoch']:.6f}", flush=True)
    eager = statistics.median(r["loop_seconds"] for r in calls["eager"][1:])
    comp = statistics.median(r["loop_seconds"] for r in calls["compiled"][1:])
    out = {"model": a.model, "args": vars(a), "machine": describe(matmul=False),
           "first_compiled_call_s": round(calls["compiled"][0]["loop_seconds"], 2),
           "eager_s": [round(r["loop_seconds"], 3) for r in calls["eager"]],
           "compiled_s": [round(r["loop_seconds"], 3) for r in calls["compiled"]],
           "eager_median_s": round(eager, 3), "compiled_median_s": round(comp, 3),
           "speedup": round(eager / comp, 3),
           "first_loss": {k: calls[k][0]["loss_first_epoch"] for k in calls}}
    print(f"torch.compile: first compiled call {out['first_compiled_call_s']:.0f} s (the compile); "
          f"then {comp:.2f} s vs eager {eager:.2f} s per call (x{out['speedup']:.2f}, medians of "
          f"{a.repeat}); first-epoch loss {out['first_loss']['compiled']:.6f} vs "
          f"{out['first_loss']['eager']:.6f}", flush=True)
    write_result(a.out, out)
    return out


if __name__ == "__main__":
    main()
