"""A cheap, content-based fingerprint of a checkpoint, so a patch can refuse the wrong base.

sha256 over every tensor's name, dtype and shape, and over sampled bytes of its data: the whole
tensor when it is at most 64 KiB, else 16 evenly spaced 4 KiB windows (first and last included).
It reads at most 64 KiB per tensor, so it costs milliseconds on any model, and any fine-tune of
more than a handful of entries per tensor changes it. It is not a cryptographic proof that two
checkpoints are identical; it guards against applying a patch to a different model.
"""
from __future__ import annotations

import hashlib

from .checkpoint import Checkpoint

VERSION = "taskloc-fingerprint-1"
WHOLE_LIMIT = 64 * 1024
WINDOW = 4096
N_WINDOWS = 16


def sample_windows(nbytes: int) -> list[tuple[int, int]]:
    """Byte ranges of a tensor's data that the fingerprint hashes."""
    if nbytes <= WHOLE_LIMIT:
        return [(0, nbytes)]
    last = nbytes - WINDOW
    return [(i * last // (N_WINDOWS - 1), i * last // (N_WINDOWS - 1) + WINDOW) for i in range(N_WINDOWS)]


def fingerprint(ckpt: Checkpoint) -> str:
    h = hashlib.sha256(VERSION.encode())
    for name in sorted(ckpt.names()):
        dtype, shape = ckpt.dtype(name), ckpt.shape(name)
        h.update(f"\n{name}\t{dtype}\t{list(shape)}\n".encode())
        h.update(ckpt.sample_bytes(name, sample_windows(ckpt.numel(name) * dtype.itemsize)))
    return "sha256:" + h.hexdigest()
