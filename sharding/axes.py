"""The closed vocabulary of logical axis names, and the one helper that spells NNX's metadata key.

Every parameter, cache and activation dimension in whisper-nnx is named with one of these.
Partition rules (`rules.py`) map names to mesh axes; a name outside this table is a bug, so
`logical` rejects it at model-construction time instead of failing later inside XLA.
"""

from __future__ import annotations

from typing import Optional

AXES: dict[str, str] = {
    # Weights
    "embed": "model width D (residual stream) of encoder and decoder",
    "heads": "attention heads H",
    "head_dim": "per-head width K",
    "mlp": "MLP hidden width F (4 D)",
    "vocab": "token vocabulary V (embedding rows, output logits)",
    "mel": "mel bins M, the input channels of the first convolution",
    "conv_in": "input channels of the second convolution (equal to D)",
    "conv_width": "convolution kernel taps (3)",
    "audio_pos": "encoder positions of the sinusoidal table (1500)",
    "text_pos": "decoder positions of the learned table (448)",
    # Activations and caches
    "batch": "examples; audio windows with beams folded in; the data-parallel axis",
    "audio_len": "encoder sequence S (frames after the stride-2 convolution)",
    "text_len": "decoder tokens T of the current call",
    "cache_len": "positions of the static self-attention KV cache",
    "layers": "stacked per-layer arrays (KV cache leading axis)",
}

_METADATA_KEY = "out_sharding"  # NNX's name for a Variable's logical partitioning


def logical(*names: Optional[str]) -> tuple[Optional[str], ...]:
    """Validated tuple of logical names (None = never partitioned) for one array's axes."""
    unknown = [n for n in names if n is not None and n not in AXES]
    if unknown:
        raise ValueError(f"unknown logical axis names {unknown}; the vocabulary is {sorted(AXES)}")
    return tuple(names)


def param_metadata(*names: Optional[str]) -> dict[str, tuple[Optional[str], ...]]:
    """Keyword arguments that attach logical names to an `nnx.Param`/`nnx.Variable`."""
    return {_METADATA_KEY: logical(*names)}
