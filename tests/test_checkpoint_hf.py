"""Hugging Face transformers checkpoints: safetensors files (single and sharded, float32, float16,
bfloat16) read into the same model, and clear errors for broken ones. The files are written by
independent means (checkpoint_files.py says how)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import whisper
from checkpoint_files import (
    ALIGNMENT_HEADS,
    FLOAT_CASTS,
    SMALL,
    assert_params_equal,
    hf_config,
    hf_names,
    hf_tensors,
    logits_of,
    raises,
    write_hf_dir,
)

from reference import relative_error
from whisper_nnx.engine.checkpoints.formats import hf_to_reference_name, read_checkpoint
from whisper_nnx.engine.checkpoints.tensor_files import CheckpointError, read_safetensors
from whisper_nnx.engine.checkpoints.weights import load_model, model_params


def test_hf_names_map_to_reference_names():
    for ref, hf in hf_names(SMALL).items():
        assert hf_to_reference_name(hf) == ref, hf


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_hf_float32_loads_the_same_model(small_source, tmp_path, sharded):
    tensors = hf_tensors(small_source.ref_state, SMALL, tied_output=not sharded)
    directory = write_hf_dir(tmp_path / "hf", tensors, SMALL, heads=ALIGNMENT_HEADS, sharded=sharded)
    checkpoint = read_checkpoint(directory)
    assert checkpoint.source_format == "hf"
    assert checkpoint.dims == SMALL
    assert checkpoint.alignment_heads == ALIGNMENT_HEADS
    assert_params_equal(checkpoint.params, small_source.params)
    model = load_model(checkpoint)
    assert_params_equal(model_params(model), small_source.params)
    # Same weights, same program: the logits are the small_source model's, bit for bit ...
    np.testing.assert_array_equal(logits_of(model, small_source), small_source.logits)
    # ... and the reference implementation's holding the transformers tensors, to fp32 tolerance.
    with torch.no_grad():
        ref_logits = small_source.ref(torch.from_numpy(small_source.mel), torch.from_numpy(small_source.tokens).long())
    assert relative_error(logits_of(model, small_source), ref_logits.numpy()) < 1e-4


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_hf_half_precision_files_equal_the_cast(small_source, tmp_path, dtype, sharded):
    cast = FLOAT_CASTS[dtype]
    tensors = hf_tensors(small_source.ref_state, SMALL, dtype=cast)
    directory = write_hf_dir(tmp_path / "hf", tensors, SMALL, sharded=sharded)
    raw = read_safetensors(directory / ("model-00001-of-00002.safetensors" if sharded
                                        else "model.safetensors"))
    assert all(v.dtype == np.dtype(cast) for v in raw.values())
    checkpoint = read_checkpoint(directory)
    assert checkpoint.dims == SMALL and checkpoint.alignment_heads is None
    assert_params_equal(checkpoint.params, small_source.params, dtype=cast)
    # load_model places them as float32: the exact widening of the half-precision values.
    expected = {k: np.asarray(v).astype(cast).astype(np.float32) for k, v in small_source.params.items()}
    assert_params_equal(model_params(load_model(checkpoint)), expected)


def test_hf_without_encoder_positions_uses_sinusoids(small_source, tmp_path):
    """Some exports leave out the fixed encoder table: it is recomputed as the reference's."""
    tensors = hf_tensors(small_source.ref_state, SMALL)
    del tensors["model.encoder.embed_positions.weight"]
    checkpoint = read_checkpoint(write_hf_dir(tmp_path / "hf", tensors, SMALL))
    ref_table = whisper.model.sinusoids(SMALL.n_audio_ctx, SMALL.n_audio_state).numpy()
    np.testing.assert_allclose(checkpoint.params["encoder/positions"], ref_table, atol=1e-5)


# --- clear errors ---------------------------------------------------------------------------

@pytest.fixture()
def small_hf(small_source, tmp_path):
    def make(mutate=None, name="hf", config=None):
        tensors = hf_tensors(small_source.ref_state, SMALL)
        if mutate:
            mutate(tensors)
        directory = write_hf_dir(tmp_path / name, tensors, SMALL)
        if config is not None:
            (directory / "config.json").write_text(json.dumps(config))
        return directory
    return make


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


def test_missing_shard(tmp_path, small_source):
    directory = write_hf_dir(tmp_path / "sharded", hf_tensors(small_source.ref_state, SMALL), SMALL, sharded=True)
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
