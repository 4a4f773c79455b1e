"""Weight-only int8: hand-computed quantization, real tiny.en logits and greedy transcripts."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import jiwer
import numpy as np
import pytest
import whisper
from flax import nnx
from whisper.normalizers import EnglishTextNormalizer

from whisper_nnx.engine.audio import load_audio, pad_or_trim
from whisper_nnx.engine.decode.generate import Generator
from whisper_nnx.engine.decode.window_decoder import WindowDecoder
from whisper_nnx.engine.features import log_mel_spectrogram
from whisper_nnx.engine.model.quantize import (
    CONTRACTED_AXES,
    Int8Weight,
    quantize_array,
    quantize_weights,
    quantized_names,
    weight_bytes,
)
from whisper_nnx.engine.transcribe import TranscribeOptions


def test_quantize_array_by_hand():
    # [D=3, F=2], contracted over D: column 0 peaks at 1.27 (scale 0.01), column 1 at 2.0.
    w = np.array([[1.0, -0.5], [0.25, 2.0], [-1.27, 0.0]], np.float32)
    q = quantize_array(jnp.asarray(w), (0,))
    s1 = 2.0 / 127
    np.testing.assert_allclose(np.asarray(q.scale), [[0.01, s1]], rtol=1e-6)
    # -0.5 / s1 = -31.75 rounds to -32; the rest are exact multiples of their scale.
    np.testing.assert_array_equal(np.asarray(q.values), [[100, -32], [25, 127], [-127, 0]])
    assert q.values.dtype == jnp.int8 and q.shape == (3, 2) and q.dtype == jnp.float32
    expected = np.array([[1.0, -32 * s1], [0.25, 2.0], [-1.27, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(q[...]), expected, rtol=1e-6)
    assert float(q[0, 1]) + 0.5 == pytest.approx(-0.25 * s1, abs=1e-7)  # a quarter step off: < s1 / 2


def test_error_is_at_most_half_a_step_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 5)).astype(np.float32) * np.array([0.01, 1.0, 100.0, 0.1, 3.0])
    w[:, :, 3] = 0.0  # an all-zero channel stays exactly zero
    q = quantize_array(jnp.asarray(w), (0, 1))  # the out_kernel [H, K, D] layout
    scale = np.asarray(q.scale)
    assert scale.shape == (1, 1, 5)
    np.testing.assert_allclose(scale[0, 0], np.abs(w).max((0, 1)) / 127 + (w.max((0, 1)) == 0), rtol=1e-6)
    err = np.abs(np.asarray(q.dequantize()) - w)
    assert np.all(err <= scale / 2 * (1 + 1e-5))
    assert np.all(np.asarray(q.values)[:, :, 3] == 0) and np.all(np.abs(np.asarray(q.values)) <= 127)
    peaks = np.abs(np.asarray(q.values)).max((0, 1))
    np.testing.assert_array_equal(peaks, [127, 127, 127, 0, 127])  # each nonzero channel spans the range


def test_rejects_unknown_modes_and_names():
    with pytest.raises(ValueError, match="mode"):
        quantize_weights(None, mode="int4")
    with pytest.raises(ValueError, match="positions"):
        quantize_weights(None, names=("positions",))


@pytest.fixture(scope="module")
def quantized(tiny):
    """(float Transcriber, its model, the int8 copy of that model)."""
    model = nnx.merge(tiny.generator.graphdef, tiny.generator.state)
    return tiny, model, quantize_weights(model)


@pytest.mark.slow
def test_quantizes_the_selected_weights_and_shrinks_them(quantized):
    _, model, qmodel = quantized
    names = quantized_names(qmodel)
    # 4 encoder blocks x 6 + 4 decoder blocks x 10 + 2 convs + the embedding
    assert len(names) == 4 * 6 + 4 * 10 + 3
    assert {n.split("/")[-1] for n in names} == set(CONTRACTED_AXES)
    assert isinstance(qmodel.decoder.token_embedding.get_value(), Int8Weight)
    assert not isinstance(model.decoder.token_embedding.get_value(), Int8Weight)  # input untouched
    assert weight_bytes(qmodel) < 0.3 * weight_bytes(model)
    partial = quantize_weights(model, names=("fc1_kernel", "fc2_kernel"))
    assert len(quantized_names(partial)) == 2 * 8
    assert len(quantized_names(quantize_weights(partial))) == len(names)  # idempotent on the rest


@pytest.mark.slow
def test_int8_logits_stay_close_to_float_on_real_speech(quantized, data_dir, transcripts):
    _, model, qmodel = quantized
    audio = pad_or_trim(load_audio(data_dir / "sample_joe.flac"))
    mel = log_mel_spectrogram(jnp.asarray(audio)[None], model.dims.n_mels)
    tok = whisper.tokenizer.get_tokenizer(False)
    prompt = list(tok.sot_sequence_including_notimestamps)
    tokens = jnp.asarray([prompt + tok.encode(" " + transcripts["sample_joe.flac"])], jnp.int32)
    ref = np.asarray(model(mel, tokens))[0, len(prompt) - 1:]
    graphdef, state = nnx.split(qmodel)  # as Generator runs it: weights are jit arguments
    out = np.asarray(jax.jit(lambda s, m, t: nnx.merge(graphdef, s)(m, t))(state, mel, tokens))
    out = out[0, len(prompt) - 1:]
    np.testing.assert_allclose(out, np.asarray(qmodel(mel, tokens))[0, len(prompt) - 1:], atol=1e-4)
    # Measured here: max |diff| / max |logit| 0.032, rms ratio 0.025 (sample_espeak: 0.09, 0.07).
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.08
    assert np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref ** 2)) < 0.04
    np.testing.assert_array_equal(out.argmax(-1), ref.argmax(-1))  # every teacher-forced step


@pytest.mark.slow
def test_int8_greedy_transcripts_keep_the_words(quantized, data_dir, transcripts):
    transcriber, _, qmodel = quantized
    int8 = copy.copy(transcriber)  # same tokenizer and settings, the int8 weights
    int8.generator = Generator(qmodel)
    int8.decoder = WindowDecoder(int8.generator, int8.dims)
    files = ["sample_joe.flac", "sample_espeak.flac"]
    options = TranscribeOptions.from_kwargs(language="en", temperature=0.0)
    norm = EnglishTextNormalizer()
    truth = [norm(transcripts[f]) for f in files]
    wer = {}
    for name, t in (("float32", transcriber), ("int8", int8)):
        records = t.decode_clips([data_dir / f for f in files], options)
        wer[name] = jiwer.wer(truth, [norm(r["text"]) for r in records])
    assert wer["int8"] <= wer["float32"] + 0.05, wer
