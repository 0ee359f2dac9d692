"""Where a model runs, in which precision, and what memory it took: decided here once, for the
trainer, the scorers and the teacher engines alike.

"auto" is bf16 on a GPU and fp32 on a CPU: AVX2 CPUs have no bf16 arithmetic, and a probe ran bf16
~10x slower than fp32 in training and ~5x slower in vLLM (probed on the 2-core AVX2 dev box). On a
CPU with AVX-512 BF16 the trainer ran x2.2 faster in bf16 but its first-epoch loss moved +2.85%
(docs/results.md section 5; `activesyn bench --parts trainer` repeats the check), so auto stays fp32.
"""

from __future__ import annotations

DTYPES = ("auto", "float32", "bfloat16", "float16")


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def dtype_name(name: str, *, cuda: bool | None = None) -> str:
    """A dtype name from config ("auto", "float32", "bfloat16", "float16") -> the concrete one."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: choose one of {', '.join(DTYPES)}")
    if name == "auto":
        return "bfloat16" if (on_gpu() if cuda is None else cuda) else "float32"
    return name


def resolve_dtype(name: str, *, cuda: bool | None = None):
    """The torch dtype for a config dtype name (see dtype_name)."""
    import torch

    return getattr(torch, dtype_name(name, cuda=cuda))


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux's ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
