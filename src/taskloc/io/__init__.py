"""Checkpoint input and output: lazy readers for every supported layout, format-keeping writers,
atomic writes, fingerprints.

    ckpt = open_checkpoint("path/to/model")      # .safetensors, HF folder, sharded, LoRA, run dir
    ckpt.names(); ckpt.shape(n); ckpt.dtype(n)   # from headers, no data read
    ckpt.get(n)                                  # one tensor
"""
from .checkpoint import Checkpoint, MemoryCheckpoint, PickleCheckpoint, SafetensorsCheckpoint
from .fingerprint import fingerprint
from .lora import LoraAdapter
from .resolve import open_checkpoint
from .writers import check_output, output_kind, write_like

__all__ = [
    "Checkpoint", "LoraAdapter", "MemoryCheckpoint", "PickleCheckpoint", "SafetensorsCheckpoint",
    "check_output", "fingerprint", "open_checkpoint", "output_kind", "write_like",
]
