"""Bridges to the reference implementation (openai-whisper on CPU PyTorch), for tests only."""

from __future__ import annotations

import numpy as np

from whisper_nnx.engine.checkpoints.reference import reference_model

__all__ = ["reference_model", "relative_error"]


def relative_error(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
