"""Fidelity to the reference where a small difference changes transcripts: the compression
ratio behind temperature fallback, the fallback temperatures, one compiled program per prompt
bucket, and the warnings the reference gives for options an English-only model ignores."""

from __future__ import annotations

import random

import numpy as np
import pytest

from whisper_nnx.engine.cli import fallback_temperatures
from whisper_nnx.engine.decode.window_decoder import compression_ratio


def _strings() -> list[str]:
    rng = random.Random(0)
    words = ["thank", "you", "the", "a", "quick", "brown", "fox", "Grüße", "naïve", "日本語", ".", ","]
    out = [" Thank you." * 7, " I'm going to go to the store." * 3, "a", " ", "ab" * 200,
           "The quick brown fox jumps over the lazy dog, and then it runs back home."]
    for _ in range(200):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 120))))
    return out


def test_compression_ratio_equals_the_reference():
    """zlib (as whisper.utils and faster-whisper), not gzip: the gzip header and trailer made
    repetitive text look less repetitive (" Thank you." x 7: 2.27 instead of 3.50)."""
    from whisper.utils import compression_ratio as reference

    for text in _strings():
        assert compression_ratio(text) == pytest.approx(reference(text), rel=1e-12), text
    assert compression_ratio(" Thank you." * 7) == pytest.approx(3.5, abs=1e-9)
    assert compression_ratio(" Thank you." * 7) > 2.4  # the default threshold: this is retried


@pytest.mark.parametrize("start,increment", [(0.0, 0.2), (0.0, 0.35), (0.0, 0.3), (0.1, 0.25), (0.0, 0.4),
                                             (0.5, 0.5), (0.0, 1.0), (0.9, 0.2), (1.0, 0.2), (0.0, 0.1)])
def test_fallback_temperatures_follow_the_reference_cli(start, increment):
    """The reference: np.arange(t, 1.0 + 1e-6, increment): never above 1.0."""
    expected = tuple(round(float(t), 6) for t in np.arange(start, 1.0 + 1e-6, increment))
    got = fallback_temperatures(start, increment)
    assert got == pytest.approx(expected, abs=1e-9)
    assert max(got) <= 1.0


def test_fallback_temperatures_without_increment():
    assert fallback_temperatures(0.3, None) == (0.3,)
    assert fallback_temperatures(0.0, 0.0) == (0.0,)


@pytest.mark.slow
def test_one_program_per_prompt_bucket_in_a_sequential_run(data_dir):
    """A file decoded alone (every batch has one row, so one exact prompt length) traces the
    decode program once per prompt-length bucket, not once per length (the encoder is part of
    that program, so a per-length program recompiles everything)."""
    import jax

    from whisper_nnx.engine.decode.prompts import _PROMPT_BUCKETS
    from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber

    # Its own model, not the session's `tiny`: it counts traces, and programs that earlier tests
    # compiled on a shared model would not be traced again here.
    tiny = Transcriber("tiny.en")

    traces: list[str] = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/jaxpr_trace_duration" and kwargs.get("fun_name") in (
                "_generate", "_start", "_resume"):
            traces.append(kwargs["fun_name"])

    lengths: list[int] = []
    decode = tiny.decoder.decode

    def recording_decode(mel, tokenizer, prompts, options, seeds=None):
        lengths.extend(len(p) for p in prompts)
        return decode(mel, tokenizer, prompts, options, seeds=seeds)

    tiny.decoder.decode = recording_decode
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        options = TranscribeOptions.from_kwargs(language="en", temperature=0.0, beam_size=None, batch_size=1)
        record = tiny.transcribe([data_dir / "longform" / "lecture.ogg"], options)[0]
    finally:
        tiny.decoder.decode = decode
        jax.monitoring.unregister_event_duration_listener(listen)
    assert record["error"] is None and record["windows"] >= 6
    buckets = {next((b for b in _PROMPT_BUCKETS if b >= n), n) for n in lengths}
    assert len(set(lengths)) > len(buckets)  # the run does meet several lengths in one bucket
    assert 1 <= len(traces) <= len(buckets), (traces, sorted(set(lengths)))


@pytest.mark.slow
def test_a_looping_window_falls_back_as_in_the_reference(tiny, data_dir):
    """"Thank you." x 8: the greedy decode repeats itself (zlib ratio far above 2.4), so the
    reference decodes the window again at 0.2: ours must reach the same fallback and report the
    same first-pass ratio. (Two temperatures, not the default six: the clip falls back through
    every one given, 45 s a pass with six on a 2-core CPU; the fallback's trigger is the same.)"""
    import torch
    import whisper

    from reference import reference_model
    from whisper_nnx.engine.audio import load_audio
    from whisper_nnx.engine.checkpoints.formats import read_checkpoint
    from whisper_nnx.engine.transcribe import TranscribeOptions

    audio = load_audio(data_dir / "sample_thanks.flac")
    temperatures = (0.0, 0.2)
    options = TranscribeOptions.from_kwargs(language="en", beam_size=None, temperature=0.0)
    first = tiny.transcribe([audio], options)[0]
    ours = tiny.transcribe([audio], TranscribeOptions.from_kwargs(language="en", beam_size=None,
                                                             temperature=temperatures))[0]
    checkpoint = read_checkpoint(tiny.checkpoint_path)
    torch.set_num_threads(2)
    model = reference_model(checkpoint.dims, checkpoint.params)
    ref_first = whisper.transcribe(model, audio, language="en", temperature=0.0, fp16=False)
    ref = whisper.transcribe(model, audio, language="en", temperature=temperatures, fp16=False)

    # The greedy pass: same tokens, same (repetitive) ratio as the reference, above the threshold.
    assert first["text"] == ref_first["text"].strip()
    ratio = first["segments"][0]["compression_ratio"]
    assert ratio == pytest.approx(ref_first["segments"][0]["compression_ratio"], abs=1e-4)
    assert ratio > 2.4
    # With fallback, both leave temperature 0 behind for this window.
    assert ref["segments"][0]["temperature"] > 0.0
    assert all(s["temperature"] > 0.0 for s in ours["segments"])


@pytest.mark.slow
@pytest.mark.parametrize("settings,expected", [
    ({"language": "de"}, "English-only model but was given language 'de'; using English instead"),
    ({"task": "translate"}, "an English-only model cannot translate; transcribing in English"),
])
def test_english_only_model_warns_about_ignored_options(tiny, data_dir, caplog, settings, expected):
    """As the reference's CLI: the option is ignored with a warning, and the text is English."""
    import logging

    from whisper_nnx.engine.transcribe import TranscribeOptions

    options = TranscribeOptions.from_kwargs(beam_size=None, temperature=0.0, **settings)
    with caplog.at_level(logging.WARNING):
        record = tiny.transcribe([data_dir / "sample_joe.flac"], options)[0]
    assert record["error"] is None and record["language"] == "en"
    assert "quick brown fox" in record["text"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(expected in message for message in warned), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tiny.transcribe([data_dir / "sample_joe.flac"],
                               TranscribeOptions.from_kwargs(beam_size=None, temperature=0.0))
    assert not any(expected in r.getMessage() for r in caplog.records)  # (language auto has its own notice)
