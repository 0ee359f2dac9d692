"""Where a model runs, in which precision, and what memory it took: decided here once, for the
trainer, the scorers and the teacher engines alike.

The student's precision (`student.dtype`; the names Lightning and litgpt use):
  float32     everything in fp32.
  bf16-mixed  weights, LoRA weights, gradients, optimizer state, norms, softmax and loss in fp32;
              matmuls in bf16 under torch.autocast (trainer: DeepSpeed's `torch_autocast` section,
              its `bf16` section off; HF scorer: torch.autocast around its forward passes).
              On a CPU without bf16 arithmetic the linear layers' bf16 GEMMs are emulated with
              fp32 kernels and the same rounding (student/bf16_emulation.py): x8.5 faster than
              torch's own bf16 fallback there, for studies of what the mode computes.
  bf16-true   the whole model cast to bf16 (DeepSpeed bf16: fp32 master copies of the trainable
              weights only); on a CPU with AVX-512 BF16 the trainer ran x2.2 faster than fp32
              but its first-epoch loss moved +2.85% (docs/results.md section 5). `bfloat16`, its
              old name, still means bf16-true.
  auto        choose_precision(probe()): bf16-true on a GPU with bf16 arithmetic (as before); on a CPU only
              where it has bf16 arithmetic (AVX-512 BF16 or AMX) AND bf16-mixed is measured to hold
              fp32's accuracy (BF16_MIXED_HOLDS_ACCURACY); fp32 everywhere else. AVX2 CPUs have no
              bf16 arithmetic: a probe ran bf16 ~10x slower than fp32 in training and ~5x slower
              in vLLM (2-core AVX2 dev box). `activesyn bench --parts trainer` measures both.

Inference engines (vLLM, the HF teacher) take a weight dtype ("auto", "float32", "bfloat16",
"float16"): dtype_name maps a student precision to one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

# THE accuracy gate of `auto` on CPUs: whether bf16-mixed training holds fp32's accuracy. To be
# set from the 3-seed fp32 vs bf16-mixed comparison on a CPU with bf16 arithmetic, which has not
# run yet; until then False, so auto stays fp32 on every CPU, bf16 units or not.
BF16_MIXED_HOLDS_ACCURACY = False

DTYPES = ("auto", "float32", "bfloat16", "float16")  # engine weight dtypes
PRECISIONS = ("auto", "float32", "bf16-mixed", "bf16-true")  # student.dtype
ALIASES = {"bfloat16": "bf16-true"}  # the old name of bf16-true: job files written before it
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of bf16 arithmetic


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------ student precision
@dataclass(frozen=True)
class Probe:
    """What `auto` decides from: the device, whether it computes in bf16 natively, the gate."""
    gpu: bool
    bf16_units: bool  # GPU: torch.cuda.is_bf16_supported(); CPU: one of BF16_CPU_FLAGS
    holds_accuracy: bool  # BF16_MIXED_HOLDS_ACCURACY when probed
    hardware: str = ""  # in words, for the console line


def probe(cuda: bool | None = None) -> Probe:
    """This process's hardware (cheap: /proc/cpuinfo or one CUDA query) and the accuracy gate."""
    import torch

    gpu = on_gpu() if cuda is None else cuda
    if gpu:
        return Probe(gpu=True, bf16_units=torch.cuda.is_bf16_supported(),
                     holds_accuracy=BF16_MIXED_HOLDS_ACCURACY,
                     hardware=torch.cuda.get_device_name(0))
    from activesyn_ray.benchmarks.machine import cpu_flags

    have = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
    flags = ", ".join(have) if have else "no " + "/".join(BF16_CPU_FLAGS)
    return Probe(gpu=False, bf16_units=bool(have), holds_accuracy=BF16_MIXED_HOLDS_ACCURACY,
                 hardware=f"CPU with {flags}")


def choose_precision(p: Probe) -> tuple[str, str]:
    """`auto` on a probe result -> (precision, why). On a GPU it stays what it was before bf16-mixed
    existed, bf16-true (a bf16 base: half the memory of bf16-mixed's fp32 one); no GPU has been
    lent to measure bf16-mixed's speed or accuracy there (docs/results.md), so nothing changes."""
    if p.gpu:
        if p.bf16_units:
            return "bf16-true", f"{p.hardware} computes in bf16"
        return "float32", f"{p.hardware} has no bf16 arithmetic"
    if not p.bf16_units:
        return "float32", f"{p.hardware}: bf16 would be emulated, slower than fp32"
    if not p.holds_accuracy:
        return "float32", (f"{p.hardware}, but bf16-mixed is not yet measured to hold fp32's "
                           f"accuracy (devices.BF16_MIXED_HOLDS_ACCURACY)")
    return "bf16-mixed", f"{p.hardware}, and bf16-mixed holds fp32's accuracy"


def canonical(name: str) -> str:
    """A student.dtype value -> one of PRECISIONS (bfloat16 -> bf16-true)."""
    name = ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(f"student.dtype {name!r}: choose one of {', '.join(PRECISIONS)} "
                         f"(or {', '.join(ALIASES)})")
    return name


def student_precision(name: str, *, cuda: bool | None = None,
                      probed: Probe | None = None) -> tuple[str, str]:
    """student.dtype -> (float32 | bf16-mixed | bf16-true, why); auto asks the hardware."""
    name = canonical(name)
    if name != "auto":
        return name, "student.dtype"
    return choose_precision(probed if probed is not None else probe(cuda))


def precision_line(name: str, precision: str, why: str) -> str:
    """The console line saying what the student computes in, and why."""
    return f"student precision: {precision} ({'auto: ' if canonical(name) == 'auto' else ''}{why})"


def weight_dtype(precision: str):
    """The torch dtype the student's weights are held in: bf16 only for bf16-true (bf16-mixed
    keeps fp32 weights; autocast casts each matmul's operands)."""
    import torch

    return torch.bfloat16 if canonical(precision) == "bf16-true" else torch.float32


def emulates_bf16(precision: str, *, cuda: bool) -> bool:
    """bf16-mixed on a CPU without bf16 arithmetic: its linear layers' bf16 GEMMs are emulated
    with fp32 kernels, same rounding (student/bf16_emulation.py)."""
    return canonical(precision) == "bf16-mixed" and not cuda and not cpu_bf16_units()


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX): probe's answer, read once."""
    return probe(cuda=False).bf16_units


def autocast(precision: str, *, cuda: bool):
    """bf16 matmuls for bf16-mixed (norms, softmax, losses stay fp32 by autocast's op lists); a
    no-op context for the other precisions. On a CPU without bf16 units, with the linear layers'
    bf16 GEMMs emulated with fp32 kernels (emulates_bf16)."""
    import contextlib

    import torch

    ctx = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16,
                         enabled=canonical(precision) == "bf16-mixed")
    if not emulates_bf16(precision, cuda=cuda):
        return ctx
    from activesyn_ray.student.bf16_emulation import emulated_bf16_linear

    stack = contextlib.ExitStack()
    stack.enter_context(ctx)
    stack.enter_context(emulated_bf16_linear())
    return stack


# ------------------------------------------------------------------------------ engine dtypes
def dtype_name(name: str, *, cuda: bool | None = None) -> str:
    """A config dtype name -> the weight dtype an inference engine loads. Engine names: "auto" is
    bfloat16 on a GPU, float32 on a CPU. Student precisions: bf16-true (bfloat16) -> bfloat16;
    bf16-mixed -> bfloat16 on a GPU (an inference engine has no fp32 master weights to keep) and
    float32 on a CPU (vLLM's CPU bf16 scored x0.17 as fast as fp32 on AVX2 and agreed on 73%
    of greedy answers: docs/results.md §9; unmeasured on CPUs with bf16 units)."""
    gpu = (on_gpu() if cuda is None else cuda)
    if name == "bf16-true":
        return "bfloat16"
    if name == "bf16-mixed":
        return "bfloat16" if gpu else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: choose one of {', '.join(DTYPES + PRECISIONS[2:])}")
    if name == "auto":
        return "bfloat16" if gpu else "float32"
    return name


def resolve_dtype(name: str, *, cuda: bool | None = None):
    """The torch dtype for a config dtype name (see dtype_name)."""
    import torch

    return getattr(torch, dtype_name(name, cuda=cuda))


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux's ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
