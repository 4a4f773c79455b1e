"""Bridges to the reference implementation (openai-whisper on CPU PyTorch), for tests only."""

from __future__ import annotations

import numpy as np
import torch
import whisper
from whisper.model import ModelDimensions

from whisper_nnx.engine.model.config import ModelDims
from whisper_nnx.engine.checkpoints.names import reference_table


def reference_model(dims: ModelDims, params: dict[str, np.ndarray],
                    alignment_heads=None) -> whisper.model.Whisper:
    """The reference model in float32 holding exactly `params` (our paths and layouts)."""
    model = whisper.model.Whisper(ModelDimensions(**dims.to_dict()))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {}
    for path, (ref, transform) in reference_table(dims).items():
        ours = np.asarray(params[path], np.float32)
        if transform == "linear":  # ours [in, ...out] <- torch [out, in]
            array = ours.reshape(shapes[ref][::-1]).T
        elif transform == "conv":
            array = ours.transpose(2, 1, 0)
        else:
            array = ours.reshape(shapes[ref])
        state[ref] = torch.from_numpy(np.array(array, copy=True))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"alignment_heads"}, (missing, unexpected)
    if alignment_heads is not None:
        mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
        for layer, head in alignment_heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.float().eval()


def relative_error(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
