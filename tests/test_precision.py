"""bfloat16 compute on real tiny.en: close encoder output, bf16 weights, same words as float32."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import jiwer
import numpy as np
import pytest
from flax import nnx
from whisper.normalizers import EnglishTextNormalizer

from whisper_nnx.engine.audio import load_audio
from whisper_nnx.engine.model.layers import matmul
from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber

CORPUS = Path(__file__).parent / "data" / "corpus"


def test_matmul_accumulates_in_float32():
    x = np.full((1, 4096), 1.0 + 2.0 ** -7, np.float32)  # exactly representable in bfloat16
    w = np.ones((4096, 1), np.float32)
    got = float(matmul("td,df->tf", x, w, jnp.bfloat16)[0, 0])
    # float32 accumulation: 4096 * (1 + 1/128) = 4128, which rounds to 4128 in bf16 (8 bits of
    # mantissa: 4128 = 2^12 * 1.0078125). A bf16 running sum would stall at 256 + ... far lower.
    assert got == pytest.approx(4128.0, rel=2 ** -8)
    np.testing.assert_allclose(np.asarray(matmul("td,df->tf", x, w, jnp.float32)), [[4128.0]], rtol=1e-6)


@pytest.mark.parametrize("spec,x_shape,w_shape", [("btd,vd->btv", (1, 1, 64), (300, 64)),
                                                  ("bthk,hkd->btd", (1, 1, 4, 16), (4, 16, 64)),
                                                  ("btd,dhk->bthk", (1, 1, 64), (64, 4, 16))])
def test_single_row_bfloat16_matmul_equals_the_batched_row(spec, x_shape, w_shape):
    """One row goes through the two-row path (XLA's bf16 matrix-vector dot is slow): same numbers."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    one = np.asarray(matmul(spec, x, w, jnp.bfloat16, out_dtype=jnp.float32))
    two = np.asarray(matmul(spec, np.concatenate([x, -x]), w, jnp.bfloat16, out_dtype=jnp.float32))[:1]
    exact = np.einsum(spec, x.astype(jnp.bfloat16).astype(np.float64), w.astype(jnp.bfloat16).astype(np.float64))
    assert one.shape == exact.shape
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, exact, rtol=1e-5, atol=1e-4)  # bf16 inputs, float32 sums


@pytest.fixture(scope="module")
def pair(tiny):
    return tiny, Transcriber("tiny.en", dtype="bfloat16")


def test_bfloat16_weights_and_encoder_output(pair, data_dir):
    full, half = pair
    state = nnx.state(nnx.merge(half.generator.graphdef, half.generator.state))
    kinds = {leaf.dtype for leaf in jax.tree.leaves(state)}
    assert kinds == {jnp.dtype(jnp.bfloat16)}, kinds  # weights stored in bf16: half the bytes to read
    mel = full.mel(load_audio(data_dir / "sample_joe.flac")[None, :480_000])
    features = [np.asarray(nnx.merge(t.generator.graphdef, t.generator.state).encode(mel), np.float32)
                for t in pair]
    scale = np.abs(features[0]).max()
    assert np.abs(features[1] - features[0]).max() / scale < 0.03
    assert np.corrcoef(features[0].ravel(), features[1].ravel())[0, 1] > 0.999


def test_bfloat16_transcripts_keep_the_word_error_rate(pair):
    known = json.loads((CORPUS / "transcripts.json").read_text())
    paths = sorted(CORPUS.glob("*.flac"))[:12]
    norm = EnglishTextNormalizer()
    truth = [norm(known[p.name]) for p in paths]
    options = TranscribeOptions.from_kwargs(language="en", temperature=0.0, batch_size=4)
    wers = [jiwer.wer(truth, [norm(r["text"]) for r in t.transcribe([str(p) for p in paths], options)])
            for t in pair]
    assert wers[0] < 0.25  # the float32 baseline is sane (these first clips are espeak-ng: robotic)
    assert wers[1] <= wers[0] + 0.02, wers


class _Device:
    def __init__(self, platform, compute_capability=None):
        self.platform, self.compute_capability = platform, compute_capability


def test_auto_dtype_follows_the_device():
    from whisper_nnx.engine.transcribe import resolve_dtype

    assert resolve_dtype("auto", _Device("cpu")) == "float32"
    assert resolve_dtype("auto", _Device("tpu")) == "bfloat16"
    assert resolve_dtype("auto", _Device("gpu", "9.0")) == "bfloat16"  # H100
    assert resolve_dtype("auto", _Device("gpu", "8.0")) == "bfloat16"  # A100
    assert resolve_dtype("auto", _Device("gpu", "7.5")) == "float16"  # T4
    assert resolve_dtype("auto", _Device("gpu", "7.0")) == "float16"  # V100
    assert resolve_dtype("bfloat16", _Device("cpu")) == "bfloat16"  # a named dtype is kept
    assert resolve_dtype("auto") == "float32"  # this machine's CPU
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float8", _Device("cpu"))


def test_float16_transcripts_keep_the_word_error_rate(tiny):
    """float16 (for GPUs without bfloat16): weights stored in float16, and the word error rate of
    float32 on the corpus's first clips, within 0.02."""
    half = Transcriber("tiny.en", dtype="float16")
    assert half.dtype == "float16" and tiny.dtype == "float32"
    state = nnx.state(nnx.merge(half.generator.graphdef, half.generator.state))
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float16)}
    known = json.loads((CORPUS / "transcripts.json").read_text())
    paths = sorted(CORPUS.glob("*.flac"))[:8]
    norm = EnglishTextNormalizer()
    truth = [norm(known[p.name]) for p in paths]
    options = TranscribeOptions.from_kwargs(language="en", temperature=0.0, batch_size=4)
    wers = [jiwer.wer(truth, [norm(r["text"]) for r in t.transcribe([str(p) for p in paths], options)])
            for t in (tiny, half)]
    assert wers[0] < 0.25 and wers[1] <= wers[0] + 0.02, wers
