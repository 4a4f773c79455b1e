"""Checkpoint formats -> one `Checkpoint` (our parameter paths, via `names.py`'s table).

- `hf`: Hugging Face transformers (`config.json` + `model.safetensors` or a sharded index);
- `ct2`: CTranslate2 `model.bin` (float32/float16/bfloat16, int8 with per-row scales); fused
  q/k/v and k/v matrices are split, the zero key bias it stores is dropped;
- `nnx`: this package's converted form (`whisper_nnx.json` + `model.safetensors` in our own
  names and layouts), which reloads with no conversion work (`save_converted`).

PyTorch pickles (`pytorch_model.bin`, `.pt`) are never loaded: `pickle_only_error` says how to
convert them to safetensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping, Optional

import jax.numpy as jnp
import numpy as np

from ..model.config import ModelDims
from .names import Checkpoint, check_params, from_reference_names
from .tensor_files import CheckpointError, read_ctranslate2, read_safetensors, write_safetensors

NNX_CONFIG = "whisper_nnx.json"
NNX_FORMAT_VERSION = 1


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

def checkpoint_format(path: str | Path) -> Optional[str]:
    """"nnx", "ct2" or "hf": the format of the weights in directory `path`; None when it holds
    none that whisper-nnx reads."""
    path = Path(path)
    if (path / NNX_CONFIG).is_file():
        return "nnx"
    if (path / "model.bin").is_file():
        return "ct2"
    if (path / "config.json").is_file() and any(path.glob("model*.safetensors*")):
        return "hf"
    return None


_PICKLED = re.compile(r"(?:^|/)(?:pytorch_model(?:-\d+-of-\d+)?\.bin|[^/]+\.(?:pt|pth|ckpt))$")


def pickled_weights(names) -> list[str]:
    """The names among `names` (file names or repo paths) of PyTorch pickles: transformers'
    `pytorch_model.bin` (or its shards), `.pt`, `.pth`, `.ckpt`."""
    return sorted(n for n in names if _PICKLED.search(str(n)))


def pickle_only_error(where: str, pickled: list[str]) -> CheckpointError:
    """The error for a checkpoint whose weights are only PyTorch pickles: whisper-nnx never
    unpickles (it can run code from the file); the command that writes safetensors instead."""
    shown = ", ".join(pickled[:3]) + (f" and {len(pickled) - 3} more" if len(pickled) > 3 else "")
    return CheckpointError(
        f"{where}: its weights are only PyTorch pickles ({shown}), which whisper-nnx does not load "
        "(unpickling can run code from the file). Convert them once to safetensors with transformers, "
        "then pass the new folder to --model: python -c \"from transformers import "
        "WhisperForConditionalGeneration as M, WhisperProcessor as P; src, out = '"
        f"{where}', 'whisper-safetensors'; M.from_pretrained(src).save_pretrained(out, "
        "safe_serialization=True); P.from_pretrained(src).save_pretrained(out)\" "
        "(an openai-whisper .pt converts with transformers' models/whisper/convert_openai_to_hf.py)")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a local checkpoint directory (or a CTranslate2 `model.bin` file) of any format.
    PyTorch pickles are refused with the command that converts them (pickle_only_error)."""
    path = Path(path)
    if path.is_file() and pickled_weights([path.name]):
        raise pickle_only_error(str(path), [path.name])
    if path.is_file() and path.suffix == ".bin":
        return _read_ct2(path.parent, path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: unknown checkpoint format (expected a directory, or a "
                              "CTranslate2 model.bin)")
    found = checkpoint_format(path)
    if found == "nnx":
        return _read_nnx(path)
    if found == "ct2":
        return _read_ct2(path, path / "model.bin")
    if found == "hf":
        return _read_hf(path)
    pickled = pickled_weights(p.name for p in path.iterdir() if p.is_file())
    if pickled:
        raise pickle_only_error(str(path), pickled)
    raise CheckpointError(f"{path}: unknown checkpoint format (looked for {NNX_CONFIG}, "
                          "model.bin, or config.json with model.safetensors)")


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
