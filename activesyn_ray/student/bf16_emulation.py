"""bf16-mixed's linear layers on a CPU without bf16 units: fp32 kernels, the same rounding.

Under autocast, every `F.linear` (the blocks' projections, LoRA's A and B, the output head) casts
its operands to bf16 and returns bf16: a bf16 GEMM with fp32 accumulation. A CPU without AVX-512
BF16 or AMX has no fast kernel for that: torch's fallback ran at 0.9 GFLOP/s against fp32's 76 on
this project's AVX2 box (docs/results.md §9), so a bf16-mixed run took ~14x fp32's time.

`emulated_bf16_linear()` computes the same thing with fp32 kernels: the operands rounded to bf16
(`.to(bfloat16).float()`), an fp32 GEMM, the result rounded to bf16. The rounding points are those
of a bf16 kernel, in the forward and, through the casts' own gradients, in the backward (the
gradient reaching each operand is rounded to bf16 as a bf16 GEMM's output would be). What differs
is the order of the fp32 accumulation, as it differs between any two bf16 kernels (oneDNN on AMX
vs on AVX-512 BF16). Everything else under autocast (attention) runs as torch runs it.

Used only for bf16-mixed on a CPU without bf16 units (`devices.emulates_bf16`), where the point
of the mode is what its numbers are (e.g. an accuracy comparison with fp32), not its speed.
"""

from __future__ import annotations

import contextlib
import functools


@functools.lru_cache(maxsize=1)
def _mode_class():
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    def rounded(t):
        return None if t is None else t.to(torch.bfloat16).float()

    class EmulatedBf16Linear(TorchFunctionMode):
        """F.linear under a CPU bf16 autocast -> fp32 GEMM on bf16-rounded operands, bf16 out."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.linear and torch.is_autocast_enabled("cpu") and \
                    torch.get_autocast_dtype("cpu") == torch.bfloat16:
                x, weight, *rest = args
                bias = rest[0] if rest else kwargs.get("bias")
                with torch.autocast("cpu", enabled=False):
                    return F.linear(rounded(x), rounded(weight), rounded(bias)).to(torch.bfloat16)
            return func(*args, **kwargs)

    return EmulatedBf16Linear


def emulated_bf16_linear(enabled: bool = True):
    """A context in which F.linear under CPU bf16 autocast is emulated (see the module docstring);
    a no-op context when not enabled."""
    return _mode_class()() if enabled else contextlib.nullcontext()
