"""Our NNX Whisper against the reference implementation holding the same weights, in float32."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import whisper

from reference import reference_model, relative_error
from whisper_nnx.engine.audio import load_audio
from whisper_nnx.engine.checkpoints.weights import load_model, model_params
from whisper_nnx.engine.model.config import ModelDims
from whisper_nnx.engine.model.whisper import build_model

TOLERANCE = 1e-4


def _decode_stepwise(model, features, tokens, prompt_len, cache_len):
    """Logits of `tokens` computed as prefill(prompt) then one cached step per token."""
    logits, cache = model.prefill(features, tokens[:, :prompt_len], cache_len)
    steps = [logits]
    for t in range(prompt_len, tokens.shape[1]):
        step_logits, cache = model.decode_step(tokens[:, t:t + 1], jnp.int32(t), cache)
        steps.append(step_logits)
    return jnp.concatenate(steps, axis=1)


def _compare(ours, ref, mel: np.ndarray, tokens: np.ndarray, prompt_len: int):
    with torch.no_grad():
        ref_features = ref.encoder(torch.from_numpy(mel))
        ref_logits = ref.decoder(torch.from_numpy(tokens).long(), ref_features).numpy()
    features = ours.encode(jnp.asarray(mel))
    assert relative_error(features, ref_features.numpy()) < TOLERANCE
    full = ours(jnp.asarray(mel), jnp.asarray(tokens))
    assert relative_error(full, ref_logits) < TOLERANCE
    stepwise = _decode_stepwise(ours, features, jnp.asarray(tokens), prompt_len, tokens.shape[1] + 3)
    assert relative_error(stepwise, ref_logits) < TOLERANCE
    # Cached decoding is the uncached forward pass, not merely close to the reference.
    np.testing.assert_allclose(np.asarray(stepwise), np.asarray(full), atol=2e-5 * float(np.abs(full).max()))
    # The argmax next tokens agree everywhere (what generation will consume).
    assert (np.asarray(full).argmax(-1) == ref_logits.argmax(-1)).mean() == 1.0


@pytest.mark.slow  # builds and runs two models
@pytest.mark.parametrize("n_vocab", [51864, 51866])
def test_random_weights_match_reference(n_vocab):
    dims = ModelDims(n_mels=80 if n_vocab == 51864 else 128, n_audio_ctx=50, n_audio_state=64,
                     n_audio_head=4, n_audio_layer=2, n_vocab=n_vocab, n_text_ctx=32,
                     n_text_state=64, n_text_head=4, n_text_layer=3)
    ours = build_model(dims, seed=3)
    ref = reference_model(dims, model_params(ours))
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((2, dims.n_mels, 100)).astype(np.float32)
    tokens = rng.integers(0, n_vocab, (2, 12)).astype(np.int32)
    _compare(ours, ref, mel, tokens, prompt_len=4)


@pytest.mark.slow
def test_real_checkpoints_match_reference(real_checkpoint, data_dir, transcripts):
    name, checkpoint = real_checkpoint
    ours = load_model(checkpoint)
    ref = reference_model(checkpoint.dims, checkpoint.params)
    audio = load_audio(data_dir / "sample_joe.flac")
    mel = whisper.log_mel_spectrogram(torch.from_numpy(whisper.pad_or_trim(audio)),
                                      n_mels=checkpoint.dims.n_mels).numpy()[None]
    tokenizer = whisper.tokenizer.get_tokenizer(checkpoint.dims.is_multilingual,
                                                num_languages=checkpoint.dims.num_languages,
                                                language="en", task="transcribe")
    text_tokens = tokenizer.encode(" " + transcripts["sample_joe.flac"])
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    tokens = np.array([prompt + text_tokens], np.int32)
    _compare(ours, ref, mel.astype(np.float32), tokens, prompt_len=len(prompt))
