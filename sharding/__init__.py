"""Logical axis names, partition-rule presets and mesh helpers for whisper-nnx.

This package never imports `whisper_nnx.engine`: model code depends on it, not the reverse.
"""

from .axes import AXES, logical, param_metadata
from .constraints import constrain, fit_spec, logical_spec, out_sharding
from .rules import PRESETS, rules_for

__all__ = ["AXES", "PRESETS", "constrain", "fit_spec", "logical", "logical_spec", "out_sharding",
           "param_metadata", "rules_for"]
