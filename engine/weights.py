"""Checkpoint formats -> one canonical parameter dict -> a (sharded) NNX Whisper.

Every format is first expressed with the reference implementation's state-dict names and
PyTorch layouts ("reference names": `encoder.blocks.0.attn.query.weight` [out, in] ...); one
table then maps those to this package's parameter paths and layouts. Formats read:

- `hf`: Hugging Face transformers (`config.json` + `model.safetensors` or a sharded index);
- `ct2`: CTranslate2 `model.bin` (float32/float16/bfloat16, int8 with per-row scales); fused
  q/k/v and k/v matrices are split, the zero key bias it stores is dropped;
- `nnx`: this package's converted form (`whisper_nnx.json` + `model.safetensors` in our own
  names and layouts), which reloads with no conversion work (`save_converted`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from whisper_nnx.sharding import fit_spec
from whisper_nnx.sharding.checks import Replicated, check_sufficiently_sharded, nbytes

from .config import ModelDims
from .model import Whisper, sinusoids
from .tensor_files import CheckpointError, read_ctranslate2, read_safetensors, write_safetensors

NNX_CONFIG = "whisper_nnx.json"
NNX_FORMAT_VERSION = 1


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


_EMBEDDING = "decoder/token_embedding"


def _pad_vocab(path: str, array: np.ndarray, dims: ModelDims) -> np.ndarray:
    """The embedding table grown with zero rows to the model's padded vocabulary."""
    if path != _EMBEDDING or array.shape[0] == dims.n_vocab_padded:
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
    shapes = {path: tuple(leaf.shape) for path, leaf in _flatten(nnx.to_pure_dict(nnx.state(abstract)))}
    shapes[_EMBEDDING] = (dims.n_vocab, dims.n_text_state)  # checkpoints hold the unpadded table
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


def dims_label(dims: ModelDims) -> str:
    return (f"{dims.n_audio_layer}+{dims.n_text_layer}-layer D={dims.n_text_state} "
            f"V={dims.n_vocab}")


# --- Hugging Face transformers layout ----------------------------------------------------------

_HF_RENAMES = [
    (r"^model\.(encoder|decoder)\.layers\.", r"\1.blocks."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."), (r"\.k_proj\.", ".key."), (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."), (r"\.fc1\.", ".mlp.0."), (r"\.fc2\.", ".mlp.2."),
    (r"^model\.encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^model\.decoder\.layer_norm\.", "decoder.ln."),
    (r"^model\.encoder\.conv", "encoder.conv"),
    (r"^model\.encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^model\.decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^model\.decoder\.embed_tokens\.", "decoder.token_embedding."),
]


def hf_to_reference_name(name: str) -> str:
    """A transformers parameter name -> the reference name (e.g. `...q_proj` -> `...query`)."""
    for pattern, replacement in _HF_RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _dims_from_hf_config(config: dict, path: Path) -> ModelDims:
    try:
        return ModelDims(
            n_mels=config["num_mel_bins"], n_audio_ctx=config["max_source_positions"],
            n_audio_state=config["d_model"], n_audio_head=config["encoder_attention_heads"],
            n_audio_layer=config["encoder_layers"], n_vocab=config["vocab_size"],
            n_text_ctx=config["max_target_positions"], n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"], n_text_layer=config["decoder_layers"])
    except KeyError as err:
        raise CheckpointError(f"{path}: config.json lacks {err.args[0]!r}; not a Whisper config") from err


def _read_hf(directory: Path) -> Checkpoint:
    config = _read_json(directory / "config.json")
    dims = _dims_from_hf_config(config, directory / "config.json")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shard_names = sorted(set(_read_json(index).get("weight_map", {}).values()))
        if not shard_names:
            raise CheckpointError(f"{index}: empty weight_map")
    else:
        shard_names = ["model.safetensors"]
    tensors: dict[str, np.ndarray] = {}
    for shard in shard_names:
        tensors.update(read_safetensors(directory / shard))
    file_names = {hf_to_reference_name(k): k for k in tensors if k != "proj_out.weight"}
    renamed = {ref: tensors[name] for ref, name in file_names.items()}
    heads = _read_json(directory / "generation_config.json").get("alignment_heads") \
        if (directory / "generation_config.json").is_file() else None
    params = _in_file(directory, lambda: from_reference_names(dims, renamed, file_names))
    return Checkpoint(dims, params, directory, "hf", _pairs(heads))


# --- CTranslate2 -------------------------------------------------------------------------------

def _ct2_weight(arrays: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    """A CTranslate2 weight as floats: int8/int16 are stored as round(w * scale)."""
    weight = arrays[f"{prefix}/weight"]
    if not np.issubdtype(weight.dtype, np.integer):
        return weight
    scale = arrays.get(f"{prefix}/weight_scale")
    if scale is None:
        raise CheckpointError(f"quantized {prefix}/weight ({weight.dtype}) has no weight_scale")
    scale = np.asarray(scale, np.float32)
    return weight.astype(np.float32) / (scale.reshape(-1, 1) if scale.ndim else scale)


def _ct2_to_reference(arrays: Mapping[str, np.ndarray], n_enc: int, n_dec: int) -> dict[str, np.ndarray]:
    ref = {
        "encoder.conv1.weight": arrays["encoder/conv1/weight"],
        "encoder.conv1.bias": arrays["encoder/conv1/bias"],
        "encoder.conv2.weight": arrays["encoder/conv2/weight"],
        "encoder.conv2.bias": arrays["encoder/conv2/bias"],
        "encoder.positional_embedding": arrays["encoder/position_encodings/encodings"],
        "decoder.positional_embedding": arrays["decoder/position_encodings/encodings"],
        "decoder.token_embedding.weight": _ct2_weight(arrays, "decoder/embeddings"),
    }

    def norm(src: str, dst: str) -> None:
        ref[f"{dst}.weight"], ref[f"{dst}.bias"] = arrays[f"{src}/gamma"], arrays[f"{src}/beta"]

    def linear(src: str, dsts: list[str]) -> None:
        """Split a (possibly fused) [n * D, D] matrix into `dsts`; a key gets no bias."""
        weight, bias = _ct2_weight(arrays, src), arrays[f"{src}/bias"]
        for w, b, dst in zip(np.split(weight, len(dsts)), np.split(bias, len(dsts)), dsts):
            ref[f"{dst}.weight"] = w
            if not dst.endswith(".key"):
                ref[f"{dst}.bias"] = b

    norm("encoder/layer_norm", "encoder.ln_post")
    norm("decoder/layer_norm", "decoder.ln")
    for stack, layers in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(layers):
            src, dst = f"{stack}/layer_{i}", f"{stack}.blocks.{i}"
            norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
            linear(f"{src}/self_attention/linear_0", [f"{dst}.attn.{p}" for p in ("query", "key", "value")])
            linear(f"{src}/self_attention/linear_1", [f"{dst}.attn.out"])
            norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
            linear(f"{src}/ffn/linear_0", [f"{dst}.mlp.0"])
            linear(f"{src}/ffn/linear_1", [f"{dst}.mlp.2"])
            if stack == "decoder":
                norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
                linear(f"{src}/attention/linear_0", [f"{dst}.cross_attn.query"])
                linear(f"{src}/attention/linear_1", [f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"])
                linear(f"{src}/attention/linear_2", [f"{dst}.cross_attn.out"])
    return ref


def _count_layers(arrays: Mapping[str, np.ndarray], stack: str) -> int:
    found = {int(m.group(1)) for name in arrays if (m := re.match(rf"{stack}/layer_(\d+)/", name))}
    return len(found)


def _read_ct2(directory: Path, model_file: Path) -> Checkpoint:
    spec, arrays = read_ctranslate2(model_file)
    if spec != "WhisperSpec":
        raise CheckpointError(f"{model_file}: a CTranslate2 {spec}, not a Whisper model")
    try:
        n_enc, n_dec = _count_layers(arrays, "encoder"), _count_layers(arrays, "decoder")
        width = arrays["decoder/embeddings/weight"].shape[1]
        dims = ModelDims(
            n_mels=arrays["encoder/conv1/weight"].shape[1],
            n_audio_ctx=arrays["encoder/position_encodings/encodings"].shape[0],
            n_audio_state=arrays["encoder/conv1/weight"].shape[0],
            n_audio_head=int(arrays["encoder/num_heads"]), n_audio_layer=n_enc,
            n_vocab=arrays["decoder/embeddings/weight"].shape[0],
            n_text_ctx=arrays["decoder/position_encodings/encodings"].shape[0],
            n_text_state=width, n_text_head=int(arrays["decoder/num_heads"]), n_text_layer=n_dec)
        reference = _in_file(model_file, lambda: _ct2_to_reference(arrays, n_enc, n_dec))
    except KeyError as err:
        raise CheckpointError(f"{model_file}: Whisper model lacks variable {err.args[0]!r}") from err
    config = directory / "config.json"
    heads = _read_json(config).get("alignment_heads") if config.is_file() else None
    params = _in_file(model_file, lambda: from_reference_names(dims, reference))
    return Checkpoint(dims, params, directory, "ct2", _pairs(heads))


# --- our converted form ------------------------------------------------------------------------

def _read_nnx(directory: Path) -> Checkpoint:
    config = _read_json(directory / NNX_CONFIG)
    if config.get("format_version") != NNX_FORMAT_VERSION:
        raise CheckpointError(f"{directory / NNX_CONFIG}: format version "
                              f"{config.get('format_version')!r}, this build reads {NNX_FORMAT_VERSION}")
    try:
        dims = ModelDims(**config["dims"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{directory / NNX_CONFIG}: bad dims ({err})") from err
    params = read_safetensors(directory / "model.safetensors")
    _in_file(directory / "model.safetensors", lambda: check_params(dims, params))
    return Checkpoint(dims, params, directory, "nnx", _pairs(config.get("alignment_heads")))


def save_converted(checkpoint: Checkpoint, out_dir: str | Path, dtype: Optional[str] = None) -> Path:
    """Write `checkpoint` in our form (optionally cast to `dtype`), tokenizer alongside."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cast = (lambda a: np.asarray(a)) if dtype is None else (lambda a: np.asarray(a).astype(jnp.dtype(dtype)))
    write_safetensors(out_dir / "model.safetensors", {k: cast(v) for k, v in checkpoint.params.items()})
    tokenizer = checkpoint.directory / "tokenizer.json"
    if tokenizer.is_file():
        (out_dir / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    config = {"format_version": NNX_FORMAT_VERSION, "dims": checkpoint.dims.to_dict(),
              "source_format": checkpoint.source_format,
              "alignment_heads": checkpoint.alignment_heads}
    tmp = out_dir / (NNX_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(out_dir / NNX_CONFIG)
    return out_dir


# --- entry points ------------------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a local checkpoint directory (or a CTranslate2 `model.bin` file) of any format."""
    path = Path(path)
    if path.is_file() and path.suffix == ".bin":
        return _read_ct2(path.parent, path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: unknown checkpoint format (expected a directory, or a "
                              "CTranslate2 model.bin)")
    if (path / NNX_CONFIG).is_file():
        return _read_nnx(path)
    if (path / "model.bin").is_file():
        return _read_ct2(path, path / "model.bin")
    if (path / "config.json").is_file() and any(path.glob("model*.safetensors*")):
        return _read_hf(path)
    raise CheckpointError(f"{path}: unknown checkpoint format (looked for {NNX_CONFIG}, "
                          "model.bin, or config.json with model.safetensors)")


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


def load_model(checkpoint: Checkpoint, *, dtype=jnp.float32, param_dtype=jnp.float32,
               mesh: Optional[jax.sharding.Mesh] = None, rules=None,
               allow_replicated: bool = False, attention_kernel: Optional[str] = None) -> Whisper:
    """Place the checkpoint's weights straight into their shardings and return the model.

    Without a mesh, every weight goes to the default device. With one, each process builds
    only the shards its devices own (`make_array_from_callback` over memory-mapped arrays), so
    no device ever holds a full copy of a weight that the rules split. A weight of 1 MiB or
    more that the mesh cannot split raises `ShardingError` unless `allow_replicated`.
    `attention_kernel`: the encoder's attention kernel, as in `Whisper` (None: the default).
    """
    with nnx.use_eager_sharding(False):
        graphdef, abstract = nnx.split(Whisper(checkpoint.dims, dtype=dtype, param_dtype=param_dtype,
                                               rngs=None, attention_kernel=attention_kernel))
    check_params(checkpoint.dims, checkpoint.params)
    shardings: dict = {}
    if mesh is not None:
        nested_shardings, replicated = param_shardings(abstract, mesh, rules)
        if not allow_replicated:
            check_sufficiently_sharded(replicated)
        shardings = dict(_flatten(nested_shardings))

    def place(path: str, array: np.ndarray) -> jax.Array:
        array = _pad_vocab(path, array, checkpoint.dims)
        if mesh is None:
            return jnp.asarray(np.asarray(array).astype(param_dtype))
        return jax.make_array_from_callback(
            array.shape, shardings[path], lambda index: np.asarray(array[index]).astype(param_dtype))

    arrays = _unflatten({path: place(path, array) for path, array in checkpoint.params.items()})
    nnx.replace_by_pure_dict(abstract, arrays)
    return nnx.merge(graphdef, abstract)


def param_shardings(abstract_state, mesh: jax.sharding.Mesh, rules) -> tuple[dict, list[Replicated]]:
    """Nested dict of NamedShardings for the parameters under `rules` on `mesh`, and the
    weights that had to be replicated on some dim the rules split (6 heads over a 4-way
    `model` axis): those dims are replicated instead, and reported."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules or ()):
        specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
    leaves = dict(_flatten(nnx.to_pure_dict(abstract_state)))
    fitted, replicated = {}, []
    for path, spec in _flatten(specs):
        shape = tuple(leaves[path].shape)
        spec, dropped = fit_spec(spec, shape, mesh)
        if dropped:
            logging.warning("%s %s: dims %s not divisible by their mesh axes; replicated", path, shape, dropped)
            replicated.append(Replicated(path, shape, nbytes(shape, leaves[path].dtype.itemsize), tuple(dropped)))
        fitted[path] = jax.sharding.NamedSharding(mesh, spec)
    return _unflatten(fitted), replicated


def model_params(model: Whisper) -> dict[str, np.ndarray]:
    """Our path -> host array of every parameter of a live model, in checkpoint shapes."""
    params = {path: np.asarray(leaf) for path, leaf in _flatten(nnx.to_pure_dict(nnx.state(model)))}
    params[_EMBEDDING] = params[_EMBEDDING][:model.dims.n_vocab]
    return params


# --- helpers -----------------------------------------------------------------------------------

def _in_file(path: Path, work: Callable):
    """Run `work`, prefixing the file's path to any CheckpointError it raises."""
    try:
        return work()
    except CheckpointError as err:
        if str(err).startswith(str(path)):
            raise
        raise CheckpointError(f"{path}: {err}") from err


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: no such file") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def _pairs(heads) -> Optional[list[tuple[int, int]]]:
    return None if heads is None else [(int(layer), int(head)) for layer, head in heads]


def _flatten(tree: Mapping, prefix: str = ""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, path + "/")
        else:
            yield path, value


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = [int(p) if p.isdigit() else p for p in path.split("/")]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
