"""CTranslate2 checkpoints: the real tiny.en `model.bin` against a parse done with `struct` alone,
files written as CTranslate2 writes them (float32, float16, bfloat16, int8), and clear errors for
broken ones (checkpoint_files.py: `parse_ct2`, `write_ct2`, `ct2_variables`)."""

from __future__ import annotations

import numpy as np
import pytest
from checkpoint_files import (
    ALIGNMENT_HEADS,
    CT2_ALIASES,
    FLOAT_CASTS,
    SMALL,
    assert_params_equal,
    ct2_variables,
    logits_of,
    parse_ct2,
    quantize_int8,
    raises,
    write_ct2,
    write_ct2_dir,
)
from model_sizes import parameter_count

from reference import relative_error
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.checkpoints.tensor_files import read_ctranslate2
from whisper_nnx.engine.checkpoints.weights import load_model


def test_real_ct2_file_against_an_independent_parse(tiny_en_checkpoint):
    path = tiny_en_checkpoint.directory / "model.bin"
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
        np.testing.assert_array_equal(tiny_en_checkpoint.params["decoder/token_embedding"][0], row0)
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
                    tiny_en_checkpoint.params[f"{ours}/{proj}_kernel"].reshape(d, d), fused[rows].T)
                if proj == "key":  # stored as zeros, dropped
                    assert not np.any(bias[rows]) and f"{ours}/key_bias" not in tiny_en_checkpoint.params
                else:
                    np.testing.assert_array_equal(tiny_en_checkpoint.params[f"{ours}/{proj}_bias"].reshape(d),
                                                  bias[rows])
        np.testing.assert_array_equal(tiny_en_checkpoint.params["encoder/conv1_kernel"],
                                      read("encoder/conv1/weight").transpose(2, 1, 0))


def test_real_ct2_parameter_count(tiny_en_checkpoint):
    """The CTranslate2 floats, less the zero key biases it stores, are the model's parameters."""
    _, layout, _ = parse_ct2(tiny_en_checkpoint.directory / "model.bin")
    dims = tiny_en_checkpoint.dims
    stored = sum(int(np.prod(shape)) for shape, type_id, _, _ in layout.values() if shape and type_id == 4)
    key_biases = (dims.n_audio_layer + 2 * dims.n_text_layer) * dims.n_text_state
    assert stored - key_biases == parameter_count(dims)
    assert sum(v.size for v in tiny_en_checkpoint.params.values()) == parameter_count(dims)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_ct2_float_files(small_source, tmp_path, dtype):
    cast = FLOAT_CASTS[dtype]
    variables = {k: v.astype(cast) if v.dtype == np.float32 else v
                 for k, v in ct2_variables(small_source.ref_state, SMALL).items()}
    checkpoint = read_checkpoint(write_ct2_dir(tmp_path / "ct2", variables))
    assert checkpoint.source_format == "ct2"
    assert checkpoint.dims == SMALL
    assert checkpoint.alignment_heads == ALIGNMENT_HEADS
    assert_params_equal(checkpoint.params, small_source.params, dtype=cast)
    # A model.bin path works as well as its directory.
    assert_params_equal(read_checkpoint(tmp_path / "ct2" / "model.bin").params, checkpoint.params)
    if dtype == "float32":
        np.testing.assert_array_equal(logits_of(load_model(checkpoint), small_source), small_source.logits)


def test_ct2_int8_weights_are_dequantized(small_source, tmp_path):
    variables = ct2_variables(small_source.ref_state, SMALL)
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
    for path, original in small_source.params.items():
        got = np.asarray(checkpoint.params[path], np.float32)
        if path.endswith("_kernel") and "conv" not in path:
            quantized_paths += 1
            step = np.abs(original).max() / 127
            assert np.abs(got - original).max() <= 0.5 * step * (1 + 1e-5), path
        else:
            np.testing.assert_array_equal(got, original, err_msg=path)
    assert quantized_paths == 4 * SMALL.n_audio_layer + 8 * SMALL.n_text_layer + 2 * (
        SMALL.n_audio_layer + SMALL.n_text_layer)
    assert relative_error(logits_of(load_model(checkpoint), small_source), small_source.logits) < 2e-2


def test_ct2_int8_quantized_embeddings(small_source, tmp_path):
    quantized, dequantized = quantize_int8(ct2_variables(small_source.ref_state, SMALL), embeddings=True)
    checkpoint = read_checkpoint(write_ct2_dir(tmp_path / "int8", quantized))
    np.testing.assert_allclose(np.asarray(checkpoint.params["decoder/token_embedding"], np.float32),
                               dequantized["decoder/embeddings/weight"], rtol=1e-6)


# --- clear errors ---------------------------------------------------------------------------

def test_broken_ct2_files(tiny_en_checkpoint, tmp_path):
    real = (tiny_en_checkpoint.directory / "model.bin").read_bytes()
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


def test_ct2_of_another_model(small_source, tmp_path):
    variables = ct2_variables(small_source.ref_state, SMALL)
    directory = tmp_path / "other"
    directory.mkdir()
    write_ct2(directory / "model.bin", variables, CT2_ALIASES, spec="TransformerSpec")
    raises(directory, str(directory / "model.bin"), "TransformerSpec", "not a Whisper model")


def test_ct2_missing_variable(small_source, tmp_path):
    variables = ct2_variables(small_source.ref_state, SMALL)
    del variables["decoder/layer_1/attention/linear_1/weight"]
    raises(write_ct2_dir(tmp_path / "ct2", variables), str(tmp_path / "ct2" / "model.bin"),
           "decoder/layer_1/attention/linear_1/weight")
