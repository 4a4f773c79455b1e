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
from whisper_nnx.engine.generate import Generator, RowLayout, SamplingConfig, shrunk_width
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


def test_shrink_width_halves_at_least():
    assert [shrunk_width(a, 16) for a in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert shrunk_width(3, 16, multiple=8) == 8 and shrunk_width(1, 8, multiple=8) == 8
    assert shrunk_width(1, 1) == 1


@pytest.mark.parametrize("sample", [False, True])
def test_dropping_finished_rows_changes_no_row(sample):
    """Rows stopped at different limits: stretches of 3 steps with finished rows dropped between
    them give every row the tokens and log-probabilities of the one-program loop."""
    model = build_model(SMALL, seed=7)
    rng = np.random.default_rng(3)
    batch = 8
    mel = jnp.asarray(rng.standard_normal((batch, 80, 100)).astype(np.float32))
    prompt = np.tile(np.array([[50257, 11, 12]], np.int32), (batch, 1))
    config = SamplingConfig(rules=LogitRules(sample_begin=3, eot=50256, no_timestamps=50362,
                                             timestamp_begin=None), sample_len=24, sample=sample)
    limits = np.array([2, 24, 4, 5, 3, 7, 1, 4], np.int32)  # one long row among short ones
    seeds = np.arange(batch, dtype=np.int32) * 11
    rows = RowLayout(np.zeros(batch, np.int32), limits, np.zeros(batch, np.int32), seeds)
    whole = Generator(model, shrink_every=0).generate(mel, prompt, config, seed=4, temperature=0.8, rows=rows)
    stretches = Generator(model, shrink_every=3)
    widths = []
    take = stretches._take
    stretches._take = lambda decode, cross, r, index: (widths.append(len(index)), take(decode, cross, r, index))[1]
    got = stretches.generate(mel, prompt, config, seed=4, temperature=0.8, rows=rows)
    assert widths == [2, 1], widths  # after 6 steps 2 rows remain (limits 7, 24), after 9 one
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(whole.tokens))
    np.testing.assert_allclose(np.asarray(got.sum_logprobs), np.asarray(whole.sum_logprobs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.no_speech_prob), np.asarray(whole.no_speech_prob), atol=1e-6)
    sampled = (np.asarray(got.tokens)[:, 3:] != 50256).sum(1)
    np.testing.assert_array_equal(sampled, limits)  # random weights never say EOT: each row ran to its limit


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
