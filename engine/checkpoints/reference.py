"""Our weights in the reference implementation: openai-whisper's PyTorch model holding exactly
a checkpoint's parameters, for parity checks and the benchmarks that run it as a peer. Needs
`torch` and `openai-whisper` (the test extra); nothing else in the package imports this module.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ..model.config import ModelDims
from .names import to_reference_names


def reference_model(dims: ModelDims, params: Mapping[str, np.ndarray],
                    alignment_heads: Optional[Sequence[tuple[int, int]]] = None):
    """openai-whisper's `Whisper` in float32 (eval mode) holding exactly `params` (our paths and
    layouts), with `alignment_heads` ((decoder layer, head) pairs) set when given."""
    import torch
    import whisper
    from whisper.model import ModelDimensions

    model = whisper.model.Whisper(ModelDimensions(**dims.to_dict()))
    state = {name: torch.from_numpy(np.array(array, np.float32, copy=True))
             for name, array in to_reference_names(dims, params).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not set(missing) <= {"alignment_heads"}:
        raise ValueError(f"the reference model does not take these weights: missing {missing}, "
                         f"unexpected {unexpected}")
    if alignment_heads is not None:
        mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
        for layer, head in alignment_heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.float().eval()
