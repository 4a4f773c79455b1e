"""Checkpoint files written by independent means, for the checkpoint tests (test_checkpoint_*.py).

transformers-named tensors come from the reference openai-whisper model's state dict renamed by
a table written out in this file (so the package's name mapping is checked, not mirrored) and are
saved with the real `safetensors` library; CTranslate2 files come from a writer in this file that
follows CTranslate2's own serializer (`ctranslate2/specs/model_spec.py`: `_serialize`,
`_quantize`), its variables placed by the rules of CTranslate2's transformers converter
(`ct2_variables`); the real tiny.en `model.bin` is cross-checked against a parse done with
`struct` alone (`parse_ct2`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import MappingProxyType

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from reference import reference_model
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.checkpoints.tensor_files import CheckpointError, write_safetensors
from whisper_nnx.engine.checkpoints.weights import model_params
from whisper_nnx.engine.model.config import ModelDims
from whisper_nnx.engine.model.whisper import build_model

# Encoder and decoder differ in heads and depth so a swap of the two shows.
SMALL = ModelDims(n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                  n_vocab=51864, n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=3)
ALIGNMENT_HEADS = [(1, 0), (2, 1)]
FLOAT_CASTS = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


# --- the source model and its state dict under other names ----------------------------------

class Source:
    """A random SMALL model (LayerNorms and positions perturbed too), and its logits.

    One per test session (conftest's `small_source`), shared by every checkpoint test: its
    parameter tables are read-only mappings of read-only arrays, so a test cannot change them
    for the next (copy with `dict(...)` to alter one)."""

    def __init__(self):
        model = build_model(SMALL, seed=7)
        state = nnx.state(model)
        rng = np.random.default_rng(7)

        def perturb(path, leaf):
            name = "/".join(str(getattr(p, "key", p)) for p in path)
            value = np.asarray(leaf)
            if name.endswith(("ln/scale", "ln_post/scale")):  # ones at init: make each LN distinct
                return jnp.asarray(1 + 0.1 * rng.standard_normal(value.shape), jnp.float32)
            if name.endswith(("ln/bias", "ln_post/bias")) or name.endswith("positions"):
                return jnp.asarray(value + 0.05 * rng.standard_normal(value.shape), jnp.float32)
            return leaf

        pure = jax.tree_util.tree_map_with_path(perturb, nnx.to_pure_dict(state))
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(model, state)
        self.model = model
        self.params = _frozen(model_params(model))
        self.ref = reference_model(SMALL, self.params)
        self.ref_state = _frozen({k: v.numpy() for k, v in self.ref.state_dict().items()})
        self.mel = rng.standard_normal((2, SMALL.n_mels, 2 * SMALL.n_audio_ctx)).astype(np.float32)
        self.tokens = rng.integers(0, SMALL.n_vocab, (2, 9)).astype(np.int32)
        self.logits = np.asarray(model(jnp.asarray(self.mel), jnp.asarray(self.tokens)))


def _frozen(arrays: dict[str, np.ndarray]) -> MappingProxyType:
    for value in arrays.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return MappingProxyType(arrays)


def hf_names(dims: ModelDims) -> dict[str, str]:
    """Reference state-dict name -> transformers `WhisperForConditionalGeneration` name, by hand."""
    names = {
        "encoder.conv1.weight": "model.encoder.conv1.weight",
        "encoder.conv1.bias": "model.encoder.conv1.bias",
        "encoder.conv2.weight": "model.encoder.conv2.weight",
        "encoder.conv2.bias": "model.encoder.conv2.bias",
        "encoder.positional_embedding": "model.encoder.embed_positions.weight",
        "encoder.ln_post.weight": "model.encoder.layer_norm.weight",
        "encoder.ln_post.bias": "model.encoder.layer_norm.bias",
        "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
        "decoder.positional_embedding": "model.decoder.embed_positions.weight",
        "decoder.ln.weight": "model.decoder.layer_norm.weight",
        "decoder.ln.bias": "model.decoder.layer_norm.bias",
    }
    projections = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
    for stack, layers in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(layers):
            ref, hf = f"{stack}.blocks.{i}", f"model.{stack}.layers.{i}"
            attentions = [("attn", "self_attn")]
            if stack == "decoder":
                attentions.append(("cross_attn", "encoder_attn"))
            for ref_attn, hf_attn in attentions:
                for ref_proj, hf_proj in projections.items():
                    names[f"{ref}.{ref_attn}.{ref_proj}.weight"] = f"{hf}.{hf_attn}.{hf_proj}.weight"
                    if ref_proj != "key":  # Whisper's key projection has no bias
                        names[f"{ref}.{ref_attn}.{ref_proj}.bias"] = f"{hf}.{hf_attn}.{hf_proj}.bias"
                for p in ("weight", "bias"):
                    names[f"{ref}.{ref_attn}_ln.{p}"] = f"{hf}.{hf_attn}_layer_norm.{p}"
            for p in ("weight", "bias"):
                names[f"{ref}.mlp.0.{p}"] = f"{hf}.fc1.{p}"
                names[f"{ref}.mlp.2.{p}"] = f"{hf}.fc2.{p}"
                names[f"{ref}.mlp_ln.{p}"] = f"{hf}.final_layer_norm.{p}"
    return names


def hf_tensors(ref_state: dict[str, np.ndarray], dims: ModelDims, dtype=np.float32,
               tied_output: bool = True) -> dict[str, np.ndarray]:
    names = hf_names(dims)
    assert set(names) == set(ref_state), set(names) ^ set(ref_state)  # the table covers it all
    tensors = {names[k]: np.ascontiguousarray(v.astype(dtype)) for k, v in ref_state.items()}
    if tied_output:
        tensors["proj_out.weight"] = tensors["model.decoder.embed_tokens.weight"].copy()
    return tensors


def hf_config(dims: ModelDims) -> dict:
    """A config.json as transformers writes it for Whisper (the keys of openai/whisper-tiny.en)."""
    return {
        "_name_or_path": "openai/whisper-tiny.en", "activation_dropout": 0.0,
        "activation_function": "gelu", "architectures": ["WhisperForConditionalGeneration"],
        "attention_dropout": 0.0, "begin_suppress_tokens": [220, 50256], "bos_token_id": 50257,
        "d_model": dims.n_text_state, "decoder_attention_heads": dims.n_text_head,
        "decoder_ffn_dim": 4 * dims.n_text_state, "decoder_layerdrop": 0.0,
        "decoder_layers": dims.n_text_layer, "decoder_start_token_id": 50257, "dropout": 0.0,
        "encoder_attention_heads": dims.n_audio_head, "encoder_ffn_dim": 4 * dims.n_audio_state,
        "encoder_layerdrop": 0.0, "encoder_layers": dims.n_audio_layer, "eos_token_id": 50256,
        "forced_decoder_ids": [[1, 50362]], "init_std": 0.02, "is_encoder_decoder": True,
        "max_length": 448, "max_source_positions": dims.n_audio_ctx,
        "max_target_positions": dims.n_text_ctx, "model_type": "whisper",
        "num_hidden_layers": dims.n_audio_layer, "num_mel_bins": dims.n_mels,
        "pad_token_id": 50256, "scale_embedding": False, "suppress_tokens": [1, 2, 7, 8, 9],
        "torch_dtype": "float32", "transformers_version": "4.27.0.dev0", "use_cache": True,
        "use_weighted_layer_sum": False, "vocab_size": dims.n_vocab,
    }


def generation_config(heads) -> dict:
    return {"alignment_heads": [list(h) for h in heads], "begin_suppress_tokens": [220, 50256],
            "bos_token_id": 50257, "decoder_start_token_id": 50257, "eos_token_id": 50256,
            "is_multilingual": False, "max_initial_timestamp_index": 50, "max_length": 448,
            "no_timestamps_token_id": 50362, "pad_token_id": 50256, "return_timestamps": False,
            "suppress_tokens": [1, 2, 7], "transformers_version": "4.31.0.dev0"}


def write_hf_dir(directory: Path, tensors: dict[str, np.ndarray], dims: ModelDims,
                 heads=None, sharded: bool = False) -> Path:
    """A directory laid out as the hub has it. bfloat16 goes through our writer (see module doc)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config(dims), indent=2))
    if heads is not None:
        (directory / "generation_config.json").write_text(json.dumps(generation_config(heads)))
    bf16 = any(v.dtype == ml_dtypes.bfloat16 for v in tensors.values())

    def save(arrays, name):
        if bf16:
            write_safetensors(directory / name, arrays, metadata={"format": "pt"})
        else:
            safetensors.numpy.save_file(arrays, str(directory / name), metadata={"format": "pt"})

    if not sharded:
        save(tensors, "model.safetensors")
        return directory
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {name: shard_names[i % 2] for i, name in enumerate(sorted(tensors))}
    for shard in shard_names:
        save({k: v for k, v in tensors.items() if weight_map[k] == shard}, shard)
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
             "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory


def assert_params_equal(actual: dict, expected: dict, dtype=None) -> None:
    """Same paths, and every array bit-equal to `expected` (cast to `dtype` first if given)."""
    assert set(actual) == set(expected), set(actual) ^ set(expected)
    for path, want in expected.items():
        want = np.asarray(want) if dtype is None else np.asarray(want).astype(dtype)
        got = np.asarray(actual[path])
        assert got.dtype == want.dtype, (path, got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want, err_msg=path)


def logits_of(model, source: Source) -> np.ndarray:
    return np.asarray(model(jnp.asarray(source.mel), jnp.asarray(source.tokens)))


# --- CTranslate2 files ------------------------------------------------------------------------

def parse_ct2(path: Path):
    """Independent parse: name -> (shape, type id, byte offset of the data, nbytes); aliases."""
    data = path.read_bytes()
    pos = 0

    def unpack(fmt):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string():
        nonlocal pos
        length = unpack("H")
        raw = data[pos:pos + length]
        pos += length
        assert raw.endswith(b"\0")
        return raw[:-1].decode()

    version, spec, revision = unpack("I"), string(), unpack("I")
    layout = {}
    for _ in range(unpack("I")):
        name = string()
        rank = unpack("B")
        shape = tuple(unpack("I") for _ in range(rank))
        type_id, nbytes = unpack("B"), unpack("I")
        layout[name] = (shape, type_id, pos, nbytes)
        pos += nbytes
    aliases = [(string(), string()) for _ in range(unpack("I"))]
    assert pos == len(data)
    return (version, spec, revision), layout, aliases


def _dtype_id(dtype) -> int:
    order = [np.float32, np.int8, np.int16, np.int32, np.float16, ml_dtypes.bfloat16]
    return [np.dtype(t) for t in order].index(np.dtype(dtype))


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str],
              spec: str = "WhisperSpec", revision: int = 3) -> None:
    """CTranslate2's `_serialize`: version 6, spec name, revision, sorted variables, aliases."""
    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = [struct.pack("<I", 6), string(spec), struct.pack("<I", revision),
           struct.pack("<I", len(variables))]
    for name in sorted(variables):
        value = np.asarray(variables[name])  # scalars stay rank 0; tobytes() is C order
        out += [string(name), struct.pack("<B", value.ndim)]
        out += [struct.pack("<I", dim) for dim in value.shape]
        out += [struct.pack("<B", _dtype_id(value.dtype)), struct.pack("<I", value.nbytes),
                value.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in sorted(aliases.items()):
        out += [string(alias), string(target)]
    path.write_bytes(b"".join(out))


def ct2_variables(ref_state: dict[str, np.ndarray], dims: ModelDims) -> dict[str, np.ndarray]:
    """The WhisperSpec variables that CTranslate2's converter writes for this model.

    Independent of the package's CTranslate2 -> reference table (`formats._ct2_to_reference`):
    the weights start from the transformers-named tensors (`hf_tensors`: the reference state
    dict renamed by this file's hand-written `hf_names`) and are placed by the rules of
    CTranslate2's Hugging Face converter (`ctranslate2/converters/transformers.py`,
    `WhisperLoader` and the `BartLoader` it extends), written out below as that converter
    states them, over transformers module names:

    - encoder: `set_conv1d(conv1|conv2)`; `set_common_layers`: `position_encodings` from
      `embed_positions`, `layer_norm` from `layer_norm`; per layer `set_attention(self_attn,
      self_attention=True)`, its `layer_norm` from `self_attn_layer_norm`, `ffn.linear_0|1` from
      `fc1|fc2`, `ffn.layer_norm` from `final_layer_norm`;
    - decoder: `embeddings` from `embed_tokens`, the same common layers, and per layer the
      encoder's plus `set_attention(encoder_attn, self_attention=False)` into `attention`, its
      `layer_norm` from `encoder_attn_layer_norm`; `projection` from `proj_out`;
    - `set_attention`: self-attention fuses q, k, v into `linear[0]`, cross-attention puts q in
      `linear[0]` and fuses k, v into `linear[1]`; `out_proj` goes to `linear[-1]`;
      `utils.fuse_linear` concatenates weights (rows) and biases, a missing bias (Whisper's
      k_proj has none) as zeros;
    - spec paths: attributes joined by "/", list entries as `name_i` (`layer_0`, `linear_1`),
      LayerNorm `gamma`/`beta`, Linear/Conv/Embeddings `weight`/`bias`, positions `encodings`.

    `decoder/projection/weight` is left out: it equals the embedding, and the serializer stores
    such a variable once, as an alias (`CT2_ALIASES`). The scalar attributes are WhisperSpec's.
    What a CTranslate2 test then checks is the reader's placement of every tensor against this
    transformers-side derivation; the name of each tensor on the transformers side is checked
    against the package's rule-based `hf_to_reference_name` by test_hf_names_map_to_reference_names.
    """
    hf = hf_tensors(ref_state, dims)
    v = {
        "encoder/num_heads": np.int16(dims.n_audio_head), "decoder/num_heads": np.int16(dims.n_text_head),
        "decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0),
        "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1),
    }

    def set_linear(spec: str, module: str) -> None:  # also set_conv1d: weight as stored, bias
        v[f"{spec}/weight"] = hf[f"{module}.weight"]
        if f"{module}.bias" in hf:
            v[f"{spec}/bias"] = hf[f"{module}.bias"]

    def set_layer_norm(spec: str, module: str) -> None:
        v[f"{spec}/gamma"], v[f"{spec}/beta"] = hf[f"{module}.weight"], hf[f"{module}.bias"]

    def fuse_linear(spec: str, modules: list[str]) -> None:
        weights = [hf[f"{m}.weight"] for m in modules]
        v[f"{spec}/weight"] = np.concatenate(weights)
        v[f"{spec}/bias"] = np.concatenate([hf.get(f"{m}.bias", np.zeros(w.shape[0], w.dtype))
                                            for m, w in zip(modules, weights)])

    def set_attention(spec: str, module: str, self_attention: bool) -> None:
        q, k, val = (f"{module}.{p}" for p in ("q_proj", "k_proj", "v_proj"))
        if self_attention:
            fuse_linear(f"{spec}/linear_0", [q, k, val])
        else:
            fuse_linear(f"{spec}/linear_0", [q])
            fuse_linear(f"{spec}/linear_1", [k, val])
        set_linear(f"{spec}/linear_{1 if self_attention else 2}", f"{module}.out_proj")  # linear[-1]

    def set_common_layers(spec: str, module: str) -> None:
        v[f"{spec}/position_encodings/encodings"] = hf[f"{module}.embed_positions.weight"]
        set_layer_norm(f"{spec}/layer_norm", f"{module}.layer_norm")

    def set_layers(spec: str, module: str, layers: int, cross: bool) -> None:
        for i in range(layers):
            layer_spec, layer = f"{spec}/layer_{i}", f"{module}.layers.{i}"
            set_attention(f"{layer_spec}/self_attention", f"{layer}.self_attn", self_attention=True)
            set_layer_norm(f"{layer_spec}/self_attention/layer_norm", f"{layer}.self_attn_layer_norm")
            if cross:
                set_attention(f"{layer_spec}/attention", f"{layer}.encoder_attn", self_attention=False)
                set_layer_norm(f"{layer_spec}/attention/layer_norm", f"{layer}.encoder_attn_layer_norm")
            set_linear(f"{layer_spec}/ffn/linear_0", f"{layer}.fc1")
            set_linear(f"{layer_spec}/ffn/linear_1", f"{layer}.fc2")
            set_layer_norm(f"{layer_spec}/ffn/layer_norm", f"{layer}.final_layer_norm")

    set_linear("encoder/conv1", "model.encoder.conv1")
    set_linear("encoder/conv2", "model.encoder.conv2")
    set_common_layers("encoder", "model.encoder")
    set_layers("encoder", "model.encoder", dims.n_audio_layer, cross=False)
    v["decoder/embeddings/weight"] = hf["model.decoder.embed_tokens.weight"]
    set_common_layers("decoder", "model.decoder")
    set_layers("decoder", "model.decoder", dims.n_text_layer, cross=True)
    assert np.array_equal(hf["proj_out.weight"], v["decoder/embeddings/weight"])  # -> the alias
    return v


CT2_ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}


def quantize_int8(variables: dict[str, np.ndarray], embeddings: bool) -> tuple[dict, dict]:
    """CTranslate2's int8 `_quantize` of every LinearSpec (and EmbeddingsSpec) weight.

    Returns the int8 variables and the same variables with each weight replaced by its exact
    dequantization `int8 / scale` in float32.
    """
    quantized, dequantized = dict(variables), dict(variables)
    for name, value in variables.items():
        is_linear = "/linear_" in name and name.endswith("/weight")
        if not (is_linear or (embeddings and name == "decoder/embeddings/weight")):
            continue
        value = value.astype(np.float32)
        amax = np.abs(value).max(axis=1)
        amax[amax == 0] = 127.0
        scale = (127.0 / amax).astype(np.float32)
        q = np.rint(value * scale[:, None]).astype(np.int8)
        quantized[name], quantized[name + "_scale"] = q, scale
        dequantized[name] = q.astype(np.float32) / scale[:, None]
    return quantized, dequantized


def write_ct2_dir(directory: Path, variables, heads=ALIGNMENT_HEADS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_ct2(directory / "model.bin", variables, CT2_ALIASES)
    (directory / "config.json").write_text(json.dumps(
        {"alignment_heads": [list(h) for h in heads], "lang_ids": [], "suppress_ids": [220],
         "suppress_ids_begin": [220, 50256]}))
    return directory


# --- errors --------------------------------------------------------------------------------

def raises(path, *substrings):
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    for s in substrings:
        assert s in message, (s, message)
    return message
