"""Partition-rule presets: tuples of (logical name, mesh axis or None).

Mesh axes are `data` (batch) and `model` (tensor parallel). Each preset lists every name of
`axes.AXES` so no name can pass through unmapped (NNX would keep an unmapped name verbatim and
fail later with "resource axis not found").
"""

from __future__ import annotations

from typing import Optional

from .axes import AXES

Rules = tuple[tuple[str, Optional[str]], ...]


def _complete(mapping: dict[str, Optional[str]]) -> Rules:
    return tuple((name, mapping.get(name)) for name in AXES)


PRESETS: dict[str, Rules] = {
    # Replicate every weight, split the batch.
    "dp": _complete({"batch": "data"}),
    # Split heads, MLP and vocabulary over `model`; batch replicated.
    "tp": _complete({"heads": "model", "mlp": "model", "vocab": "model"}),
    # Both at once on a 2-D mesh.
    "dp+tp": _complete({"batch": "data", "heads": "model", "mlp": "model", "vocab": "model"}),
}


def rules_for(preset: str) -> Rules:
    """The rules of a named preset (`dp`, `tp`, `dp+tp`)."""
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown sharding preset {preset!r}; choose from {sorted(PRESETS)}") from None
