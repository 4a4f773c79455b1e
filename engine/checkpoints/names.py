"""The reference-name table: one checkpoint's arrays in this package's parameter paths.

Every format (see `formats.py`) is first expressed with the reference implementation's
state-dict names and PyTorch layouts ("reference names": `encoder.blocks.0.attn.query.weight`
[out, in] ...); the table here maps those to our parameter paths and layouts
(`encoder/blocks/0/attn/query_kernel` [D, H, K]) and checks every shape against the model.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from flax import nnx

from ..model.config import ModelDims
from ..model.whisper import Whisper, sinusoids
from .tensor_files import CheckpointError


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read into host memory (arrays may be memory-mapped views)."""

    dims: ModelDims
    params: dict[str, np.ndarray]  # our parameter paths ("encoder/blocks/0/attn/query_kernel")
    directory: Path  # holds tokenizer.json where the checkpoint has one
    source_format: str  # "hf", "ct2" or "nnx"
    alignment_heads: Optional[list[tuple[int, int]]] = None  # (decoder layer, head) pairs


# --- reference names -> our paths --------------------------------------------------------------

def _attention_table(ref: str, ours: str) -> dict[str, tuple[str, str]]:
    table = {}
    for ref_proj, our_proj in (("query", "query"), ("key", "key"), ("value", "value"), ("out", "out")):
        table[f"{ours}/{our_proj}_kernel"] = (f"{ref}.{ref_proj}.weight", "linear")
        if ref_proj != "key":
            table[f"{ours}/{our_proj}_bias"] = (f"{ref}.{ref_proj}.bias", "reshape")
    return table


def _norm_table(ref: str, ours: str) -> dict[str, tuple[str, str]]:
    return {f"{ours}/scale": (f"{ref}.weight", "reshape"), f"{ours}/bias": (f"{ref}.bias", "reshape")}


def reference_table(dims: ModelDims) -> dict[str, tuple[str, str]]:
    """Our path -> (reference name, layout transform) for every parameter of `dims`."""
    table = {
        "encoder/conv1_kernel": ("encoder.conv1.weight", "conv"),
        "encoder/conv1_bias": ("encoder.conv1.bias", "reshape"),
        "encoder/conv2_kernel": ("encoder.conv2.weight", "conv"),
        "encoder/conv2_bias": ("encoder.conv2.bias", "reshape"),
        "encoder/positions": ("encoder.positional_embedding", "reshape"),
        "decoder/token_embedding": ("decoder.token_embedding.weight", "reshape"),
        "decoder/positions": ("decoder.positional_embedding", "reshape"),
        **_norm_table("encoder.ln_post", "encoder/ln_post"),
        **_norm_table("decoder.ln", "decoder/ln"),
    }
    stacks = (("encoder", dims.n_audio_layer, False), ("decoder", dims.n_text_layer, True))
    for stack, layers, has_cross in stacks:
        for i in range(layers):
            ref, ours = f"{stack}.blocks.{i}", f"{stack}/blocks/{i}"
            parts = [("attn", "attn"), ("attn_ln", "attn_ln"), ("mlp_ln", "mlp_ln")]
            if has_cross:
                parts += [("cross_attn", "cross_attn"), ("cross_attn_ln", "cross_attn_ln")]
            for ref_part, our_part in parts:
                make = _norm_table if ref_part.endswith("_ln") else _attention_table
                table.update(make(f"{ref}.{ref_part}", f"{ours}/{our_part}"))
            for ref_fc, our_fc in (("mlp.0", "fc1"), ("mlp.2", "fc2")):
                table[f"{ours}/mlp/{our_fc}_kernel"] = (f"{ref}.{ref_fc}.weight", "linear")
                table[f"{ours}/mlp/{our_fc}_bias"] = (f"{ref}.{ref_fc}.bias", "reshape")
    return table


EMBEDDING = "decoder/token_embedding"


def pad_vocab(path: str, array: np.ndarray, dims: ModelDims) -> np.ndarray:
    """The embedding table grown with zero rows to the model's padded vocabulary."""
    if path != EMBEDDING or array.shape[0] == dims.n_vocab_padded:
        return array
    return np.concatenate([np.asarray(array), np.zeros((dims.n_vocab_padded - array.shape[0], array.shape[1]),
                                                       array.dtype)])


@functools.lru_cache(maxsize=16)
def expected_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """Our path -> parameter shape for `dims`, from the model definition (no memory used).

    Cached: tracing the model abstractly takes seconds for the large checkpoints. Callers
    must not mutate the returned dict.
    """
    with nnx.use_eager_sharding(False):
        abstract = Whisper(dims, rngs=None)
    shapes = {path: tuple(leaf.shape) for path, leaf in flatten_tree(nnx.to_pure_dict(nnx.state(abstract)))}
    shapes[EMBEDDING] = (dims.n_vocab, dims.n_text_state)  # checkpoints hold the unpadded table
    return shapes


def _reference_shape(path: str, transform: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch-layout shape a tensor must have to become our `path` of shape `ours`."""
    if transform == "conv":
        return ours[::-1]
    if transform == "linear":  # torch [out, in]; our out-projection folds H, K into "in"
        if path.endswith("out_kernel"):
            return (ours[-1], int(np.prod(ours[:-1])))
        return (int(np.prod(ours[1:])), ours[0])
    return (int(np.prod(ours)),) if path.endswith("_bias") else ours


def from_reference_names(dims: ModelDims, tensors: Mapping[str, np.ndarray],
                         file_names: Optional[Mapping[str, str]] = None) -> dict[str, np.ndarray]:
    """Reference-named PyTorch-layout tensors -> our paths and layouts, checked against `dims`.

    `file_names` maps reference names back to the names in the source file, for messages.
    """
    shapes = expected_shapes(dims)
    table = reference_table(dims)
    def named(ref: str) -> str:
        original = (file_names or {}).get(ref, ref)
        return original if original == ref else f"{original} ({ref})"

    missing = [named(ref) for path, (ref, _) in table.items()
               if ref not in tensors and path != "encoder/positions"]
    if missing:
        raise CheckpointError(f"lacks {len(missing)} tensors the {dims_label(dims)} model needs, "
                              f"e.g. {missing[:3]}")
    params = {}
    for path, (ref, transform) in table.items():
        if ref not in tensors:  # fixed table, absent from some exports
            params[path] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
            continue
        source = tensors[ref]
        expected = _reference_shape(path, transform, shapes[path])
        if tuple(source.shape) != expected:
            raise CheckpointError(f"tensor {named(ref)} has shape {tuple(source.shape)}, expected "
                                  f"{expected} (our {path}) for the {dims_label(dims)} model")
        if transform == "linear":  # torch Linear [out, in] -> ours [in, ...out]
            array = np.asarray(source).T
        elif transform == "conv":  # torch Conv1d [out, in, width] -> ours [width, in, out]
            array = np.asarray(source).transpose(2, 1, 0)
        else:
            array = np.asarray(source)
        params[path] = array.reshape(shapes[path])
    return params


def to_reference_names(dims: ModelDims, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our paths and layouts -> reference names and PyTorch layouts: `from_reference_names`'
    inverse (an embedding table padded past the vocabulary is cut back to it)."""
    shapes = expected_shapes(dims)
    out = {}
    for path, (ref, transform) in reference_table(dims).items():
        ours = np.asarray(params[path])
        if path == EMBEDDING:
            ours = ours[:dims.n_vocab]
        shape = _reference_shape(path, transform, shapes[path])
        if transform == "linear":  # ours [in, ...out] -> torch Linear [out, in]
            out[ref] = ours.reshape(shape[::-1]).T
        elif transform == "conv":  # ours [width, in, out] -> torch Conv1d [out, in, width]
            out[ref] = ours.transpose(2, 1, 0)
        else:
            out[ref] = ours.reshape(shape)
    return out


def dims_label(dims: ModelDims) -> str:
    return (f"{dims.n_audio_layer}+{dims.n_text_layer}-layer D={dims.n_text_state} "
            f"V={dims.n_vocab}")


def check_params(dims: ModelDims, params: Mapping[str, np.ndarray]) -> None:
    """Raise CheckpointError unless `params` has exactly the model's paths and shapes."""
    shapes = expected_shapes(dims)
    missing = sorted(set(shapes) - set(params))
    unexpected = sorted(set(params) - set(shapes))
    wrong = [f"{k} {tuple(params[k].shape)} != {shapes[k]}" for k in sorted(set(shapes) & set(params))
             if tuple(params[k].shape) != shapes[k]]
    problems = ([f"missing {missing[:3]} ({len(missing)})"] if missing else []) + \
        ([f"unexpected {unexpected[:3]} ({len(unexpected)})"] if unexpected else []) + \
        ([f"wrong shapes {wrong[:3]} ({len(wrong)})"] if wrong else [])
    if problems:
        raise CheckpointError(f"parameters do not fit the {dims_label(dims)} model: " + "; ".join(problems))


def flatten_tree(tree: Mapping, prefix: str = ""):
    """("a/b/0", leaf) for every leaf of a nested dict."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten_tree(value, path + "/")
        else:
            yield path, value


def unflatten_tree(flat: Mapping[str, np.ndarray]) -> dict:
    """The nested dict of `flatten_tree`'s paths (digits become int keys, as NNX's pure dicts)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = [int(p) if p.isdigit() else p for p in path.split("/")]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
