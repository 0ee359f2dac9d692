"""How a LoRA adapter goes from the trainer to the scorers: as the bytes of the checkpoint's
`adapter_model.safetensors`, the file rank 0 already sends for the run directory (PEFT's
`save_pretrained`: `get_peft_model_state_dict`'s tensors under its key names).

The coordinator puts those bytes in the object store once and every scorer shard turns them into
tensors itself (`tensors`), so the coordinator never unpickles a tensor and never imports torch
(~3 s of CPU and ~130 MB in that process), and the adapter leaves the trainer once per round instead
of twice (a state dict and the files). A resumed run pushes the file of its last checkpoint the
same way. Full finetuning (`student.lora: null`) still sends the model's state dict.
"""

from __future__ import annotations

import json
import struct

ADAPTER_FILE = "adapter_model.safetensors"


def tensors(blob: bytes) -> dict:
    """The adapter's tensors in fp32 (what the trainer's `adapter_state` gives): the weights the
    scorers load, whatever dtype the file holds them in (bf16 under bf16-true)."""
    import torch
    from safetensors.torch import load

    return {k: v.to(torch.float32) for k, v in load(blob).items()}


def payload_bytes(blob: bytes) -> int:
    """The tensors' bytes in a safetensors blob (its header says where each one's data lies), read
    without torch: the adapter-sync size the metrics report."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    return sum(end - start for key, meta in header.items() if key != "__metadata__"
               for start, end in [meta["data_offsets"]])
