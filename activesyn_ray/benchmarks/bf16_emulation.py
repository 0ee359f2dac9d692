"""bf16-mixed emulated (student/bf16_emulation.py) against torch's own bf16 path and fp32, on a
CPU: the same training call (same examples, seeds, fresh LoRA adapter) three times in one process,
one trainer rank. The emulation is right when its losses sit on torch's bf16 ones, far from fp32's;
it is worth having where it is much faster than torch's bf16 path (a CPU without bf16 units).

    python -m activesyn_ray.benchmarks.bf16_emulation --out bf16-emulation.json
"""

from __future__ import annotations

import argparse
import os

from activesyn_ray.benchmarks import write_result
from activesyn_ray.benchmarks.trainer_efficiency import (arithmetic_examples, in_process_rank,
                                                         lora_student)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from activesyn_ray.benchmarks.machine import describe

    data = arithmetic_examples(a.examples + 8)[:a.examples]
    out = {"model": a.model, "args": vars(a), "machine": describe(matmul=False), "runs": {}}
    for name, dtype, emulate in (("float32", "float32", False),
                                 ("bf16-mixed emulated", "bf16-mixed", True),
                                 ("bf16-mixed torch", "bf16-mixed", False)):
        # one gloo group for the process: DeepSpeed joins the later ranks to the first one's
        worker = in_process_rank(lora_student(model=a.model, dtype=dtype, epochs=a.epochs,
                                              micro=a.micro))
        worker.emulate_bf16 = emulate  # what the trainer decided from the CPU, overridden here
        r = worker.train(data, round=0)
        out["runs"][name] = {k: r[k] for k in ("loss_first_epoch", "loss_last_epoch", "loop_seconds")}
        print(f"{name}: loss {r['loss_first_epoch']:.6f} (epoch 1), {r['loss_last_epoch']:.6f} "
              f"(epoch {a.epochs}); training loop {r['loop_seconds']:.1f} s", flush=True)
        worker.engine.destroy()
    runs = out["runs"]
    emu, ref, f32 = runs["bf16-mixed emulated"], runs["bf16-mixed torch"], runs["float32"]
    out["emulated_vs_torch_speedup"] = round(ref["loop_seconds"] / emu["loop_seconds"], 2)
    out["emulated_share_of_the_bf16_gap"] = {
        k: round(abs(emu[k] - ref[k]) / abs(ref[k] - f32[k]), 4) if ref[k] != f32[k] else None
        for k in ("loss_first_epoch", "loss_last_epoch")}
    print(f"emulated vs torch bf16: x{out['emulated_vs_torch_speedup']:.1f} faster; its distance to "
          f"torch's losses as a share of bf16-mixed's distance to fp32: "
          f"{out['emulated_share_of_the_bf16_gap']}", flush=True)
    write_result(a.out, out)
    return out


if __name__ == "__main__":
    main()
