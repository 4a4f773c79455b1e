"""The jitted generator: argmax rollout equivalence, and token parity with the reference."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import whisper

from reference import reference_model
from whisper_nnx.engine.audio import load_audio, pad_or_trim
from whisper_nnx.engine.config import ModelDims
from whisper_nnx.engine.generate import Generator, SamplingConfig
from whisper_nnx.engine.logit_rules import LogitRules
from whisper_nnx.engine.model import build_model
from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber
from whisper_nnx.engine.weights import read_checkpoint

SMALL = ModelDims(n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                  n_vocab=51864, n_text_ctx=40, n_text_state=64, n_text_head=4, n_text_layer=2)


def test_greedy_equals_argmax_rollout_of_uncached_forward():
    model = build_model(SMALL, seed=5)
    rng = np.random.default_rng(1)
    mel = jnp.asarray(rng.standard_normal((3, 80, 100)).astype(np.float32))
    prompt = np.array([[50257, 11, 12]] * 3, np.int32)
    prompt[1, 1] = 99
    eot = 50256
    config = SamplingConfig(rules=LogitRules(sample_begin=3, eot=eot, no_timestamps=50362,
                                             timestamp_begin=None), sample_len=12)
    result = Generator(model).generate(mel, jnp.asarray(prompt), config)
    # Reference rollout: the full uncached forward pass re-run for every new token.
    tokens = prompt.copy()
    finished = np.zeros(3, bool)
    for _ in range(12):
        logits = np.asarray(model(mel, jnp.asarray(tokens)))[:, -1]
        nxt = np.where(finished, eot, logits.argmax(-1))
        finished |= nxt == eot
        tokens = np.concatenate([tokens, nxt[:, None].astype(np.int32)], axis=1)
        if finished.all():
            break
    got = np.asarray(result.tokens)[:, :tokens.shape[1]]
    np.testing.assert_array_equal(got, tokens)


def _with_reference(name: str):
    """Our Transcriber and the reference model holding the same real weights."""
    ours = Transcriber(name)
    checkpoint = read_checkpoint(ours.checkpoint_path)
    return ours, reference_model(checkpoint.dims, checkpoint.params)


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def both(request):
    return _with_reference(request.param)


@pytest.mark.slow
@pytest.mark.parametrize("without_timestamps", [False, True])
def test_greedy_tokens_match_reference(both, data_dir, without_timestamps):
    ours, ref = both
    files = ["sample_joe.flac", "sample_espeak.flac"]
    records = ours.decode_clips([data_dir / f for f in files],
                              TranscribeOptions(language="en", temperature=0.0,
                                                               without_timestamps=without_timestamps))
    for name, record in zip(files, records):
        audio = torch.from_numpy(pad_or_trim(load_audio(data_dir / name)))
        mel = whisper.log_mel_spectrogram(audio, n_mels=ours.dims.n_mels)
        options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=without_timestamps)
        expected = whisper.decode(ref, mel, options)
        assert record["tokens"] == expected.tokens, (name, record["text"], expected.text)
        assert record["text"] == expected.text
        assert abs(record["avg_logprob"] - expected.avg_logprob) < 1e-3
        assert abs(record["no_speech_prob"] - expected.no_speech_prob) < 1e-4


@pytest.mark.slow
def test_language_detection_matches_reference(data_dir):
    ours, ref = _with_reference("base")
    audio = pad_or_trim(load_audio(data_dir / "sample_joe.flac"))
    (code, probs), = ours.detect_languages(ours.mel(audio[None]))
    _, ref_probs = ref.detect_language(whisper.log_mel_spectrogram(torch.from_numpy(audio))[None])
    assert code == "en" == max(ref_probs[0], key=ref_probs[0].get)
    for lang in ("en", "de", "fr", "es"):
        assert abs(probs[lang] - ref_probs[0][lang]) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("prompt,prefix,beam_size", [("Stella, tickets, bring.", None, None),
                                                     (None, "Please call", 3),
                                                     ([50, 60, 70], " The", None)])
def test_prompt_and_prefix_match_reference(both, data_dir, prompt, prefix, beam_size):
    ours, ref = both
    files = ["sample_espeak.flac", "sample_joe.flac"]
    records = ours.decode_clips([data_dir / f for f in files],
                              TranscribeOptions(language="en", temperature=0.0, prompt=prompt, prefix=prefix,
                                                beam_size=beam_size))
    for name, record in zip(files, records):
        mel = whisper.log_mel_spectrogram(torch.from_numpy(pad_or_trim(load_audio(data_dir / name))),
                                          n_mels=ours.dims.n_mels)
        expected = whisper.decode(ref, mel, whisper.DecodingOptions(
            language="en", fp16=False, prompt=prompt, prefix=prefix, beam_size=beam_size))
        assert record["tokens"] == expected.tokens, (name, record["text"], expected.text)


@pytest.mark.slow
def test_german_detection_transcription_and_translation_match_reference(data_dir):
    ours, ref = _with_reference("base")
    path = data_dir / "sample_german.flac"
    audio = pad_or_trim(load_audio(path))
    mel = whisper.log_mel_spectrogram(torch.from_numpy(audio))
    (code, probs), = ours.detect_languages(ours.mel(audio[None]))
    _, ref_probs = ref.detect_language(mel[None])
    assert code == "de" == max(ref_probs[0], key=ref_probs[0].get)
    assert abs(probs["de"] - ref_probs[0]["de"]) < 1e-4
    auto, translated = (ours.decode_clips([path], TranscribeOptions(task=task, temperature=0.0))[0]
                        for task in ("transcribe", "translate"))
    assert auto["language"] == "de"
    for record, task in ((auto, "transcribe"), (translated, "translate")):
        expected = whisper.decode(ref, mel, whisper.DecodingOptions(language="de", task=task, fp16=False))
        assert record["tokens"] == expected.tokens, (task, record["text"], expected.text)
    assert "Guten Morgen" in auto["text"] and "park" in translated["text"].lower()
