"""Defaults that mislead (issue 27): an English-only model asked to detect the language says so
once per run; text unlikely at every fallback temperature is flagged; punctuation decoded over
noise is not a transcript.

One CLI run at the defaults (tiny.en, --language auto) over German speech, English speech and
synthesized noise feeds the end-to-end tests; the rules themselves are also checked by hand.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from whisper_nnx.engine.hallucination import PUNCTUATION_ONLY, is_punctuation_only, noise_reason
from whisper_nnx.engine.segments import Segment

NOTICE = "tiny.en is an English-only model: it transcribes English only"
ENGLISH = ("joe_maria.flac", "joe_keys.flac", "joe_serious.flac")  # punctuation-rich speech (tests/data/corpus)
NOISE = {"dither_a.wav": (1, 1e-3), "dither_b.wav": (2, 3e-3)}  # name: (seed, peak level)
SAMPLE_RATE = 16000


def dithered_silence(seconds: float, seed: int, level: float) -> np.ndarray:
    """Silence as a recorder's dither leaves it: seeded uniform noise of peak `level`."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1.0, 1.0, int(seconds * SAMPLE_RATE)) * level).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    """16 kHz mono 16-bit PCM."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, data_dir) -> tuple[str, dict[str, dict]]:
    """One `whisper-nnx transcribe` at its defaults over German, English and noise: (stderr,
    records by file name)."""
    work = tmp_path_factory.mktemp("defaults")
    noise = [write_wav(work / name, dithered_silence(10.0, seed, level)) for name, (seed, level) in NOISE.items()]
    inputs = [data_dir / "sample_german.flac", *(data_dir / "corpus" / n for n in ENGLISH), *noise]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *map(str, inputs),
                           "--output-dir", str(work / "out"), "--no-progress"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = (work / "out" / "results.jsonl").read_text().splitlines()
    records = {Path(r["path"]).name: r for r in map(json.loads, lines)}
    assert sorted(records) == sorted(p.name for p in inputs)
    return proc.stderr, records


# --- 1. English-only model, language auto ----------------------------------------------------

@pytest.mark.slow
def test_cli_warns_once_per_run_that_the_model_is_english_only(default_run):
    stderr, _ = default_run
    assert stderr.count(NOTICE) == 1, stderr  # six inputs, one warning
    line = next(line for line in stderr.splitlines() if NOTICE in line)
    assert line.startswith("whisper-nnx: warning: tiny.en is an English-only model"), line
    assert "--model base" in line


@pytest.mark.slow
def test_transcriber_warns_once_and_only_for_language_auto(caplog):
    from whisper_nnx.engine.options import TranscribeOptions
    from whisper_nnx.engine.transcribe import Transcriber

    transcriber = Transcriber("tiny.en")  # its own: the session's `tiny` may have warned already
    with caplog.at_level(logging.WARNING):
        assert transcriber.transcribe([], TranscribeOptions.from_kwargs(language="en")) == []
        assert not [r for r in caplog.records if NOTICE in r.getMessage()]
        for _ in range(2):
            assert transcriber.transcribe([], TranscribeOptions()) == []
    notices = [r for r in caplog.records if NOTICE in r.getMessage()]
    assert len(notices) == 1 and notices[0].levelno == logging.WARNING


# --- 2. unlikely at every fallback temperature ------------------------------------------------

@pytest.mark.slow
def test_german_through_an_english_only_model_is_flagged_unlikely(default_run):
    record = default_run[1]["sample_german.flac"]
    assert record["text"] and record["segments"]  # still transcribed (as English words)
    assert [s["unlikely"] for s in record["segments"]] == [True] * len(record["segments"])
    assert record["unlikely_segments"] == len(record["segments"])
    assert all(s["temperature"] == pytest.approx(1.0) for s in record["segments"])  # the last one tried


@pytest.mark.slow
def test_decode_clips_records_say_whether_the_text_was_unlikely(tiny, data_dir):
    """`decode_clips` (one window per clip) flags its records too: German through tiny.en is
    unlikely at every temperature, an English clip is not. (The first and last of the default
    temperatures: the flag is the last attempt's thresholds, and each of the four between costs
    five sampled 224-token rows.)"""
    german, joe = tiny.decode_clips([str(data_dir / "sample_german.flac"), str(data_dir / "sample_joe.flac")],
                                    temperature=(0.0, 1.0))
    assert german["unlikely"] is True and german["temperature"] == pytest.approx(1.0)
    assert joe["unlikely"] is False and joe["text"]


@pytest.mark.slow
def test_english_speech_is_not_flagged_unlikely(default_run):
    for name in ENGLISH:
        record = default_run[1][name]
        assert record["segments"], name
        assert [s["unlikely"] for s in record["segments"]] == [False] * len(record["segments"]), name
        assert record["unlikely_segments"] == 0, name


def test_unlikely_is_written_as_a_boolean():
    segment = Segment(0.0, 1.0, " Hi.", [], stats={"avg_logprob": -1.23456, "temperature": 1.0, "unlikely": True})
    written = segment.to_json()
    assert {k: written[k] for k in ("avg_logprob", "temperature", "unlikely")} == {
        "avg_logprob": -1.2346, "temperature": 1.0, "unlikely": True}
    assert json.loads(json.dumps(segment.to_json()))["unlikely"] is True


# --- 3. punctuation over noise -------------------------------------------------------------------

def brown_noise(seconds: float, seed: int, level: float) -> np.ndarray:
    """A fan's rumble: seeded integrated white noise (its drift over 0.1 s taken out), peak `level`."""
    walk = np.cumsum(np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)))
    walk -= np.convolve(walk, np.ones(SAMPLE_RATE // 10) / (SAMPLE_RATE // 10), mode="same")
    return (walk / np.abs(walk).max() * level).astype(np.float32)


@pytest.mark.slow
def test_punctuation_decoded_over_noise_is_dropped(tiny, data_dir):
    """At temperature 0 alone (deterministic: the default fallback samples), tiny.en writes
    ". . . ." over these, from windows it rates over 90% likely silent: no text, each segment
    kept in dropped_segments with its reason; the speech beside them keeps its punctuation."""
    from whisper_nnx.engine.audio import load_audio
    from whisper_nnx.engine.options import TranscribeOptions

    noise = [brown_noise(10.0, 7, 3e-3), dithered_silence(10.0, 1, 1e-3)]
    speech = load_audio(data_dir / "sample_joe.flac")
    *quiet, spoken = tiny.transcribe([*noise, speech], TranscribeOptions.from_kwargs(temperature=0.0))
    for record in quiet:
        assert record["text"] == "" and record["segments"] == [], record["text"]
        dropped = record["dropped_segments"]
        assert len(dropped) >= 3
        for segment in dropped:
            assert segment["dropped"] == PUNCTUATION_ONLY
            assert is_punctuation_only(segment["text"]), segment["text"]
            assert segment["no_speech_prob"] > 0.9
    assert "dropped_segments" not in spoken
    assert spoken["text"] == "The quick brown fox jumps over the lazy dog, and then it runs back home."


@pytest.mark.slow
def test_noise_at_the_defaults_gives_no_text(default_run):
    """At the CLI's defaults the noise windows fall back to sampling: whatever is drawn, no text
    comes out (a window rated silent, or punctuation dropped with its reason)."""
    for name in NOISE:
        record = default_run[1][name]
        assert record["text"] == "" and record["segments"] == [], (name, record["text"])
        assert {d["dropped"] for d in record.get("dropped_segments", [])} <= {PUNCTUATION_ONLY}


@pytest.mark.slow
def test_speech_keeps_its_punctuation(default_run):
    from whisper_nnx.engine.evaluation import wer

    corpus = json.loads((Path(__file__).parent / "data" / "corpus" / "transcripts.json").read_text())
    for name in ENGLISH:
        record = default_run[1][name]
        assert "dropped_segments" not in record, name
        assert set("?!,.") & set(record["text"]), record["text"]
        assert wer(corpus[name], record["text"]) <= 0.2, (name, record["text"])


@pytest.mark.parametrize("text, expected", [
    (" . . . .", True), ("...", True), ("!", True), (" -", True), (" …?¿", True),
    (" Hello.", False), (" 42.", False), (" ", False), ("", False), (" ♪", False),
])
def test_punctuation_only(text, expected):
    assert is_punctuation_only(text) is expected


@pytest.mark.parametrize("text, no_speech, threshold, reason", [
    (" . . .", 0.92, 0.6, PUNCTUATION_ONLY),
    (" . . .", 0.55, 0.6, None),  # speech is likely: its punctuation stays
    (" . . .", 0.92, None, None),  # no threshold: no rule
    (" Hello.", 0.92, 0.6, None),  # words stay (the hallucination filter judges those)
])
def test_noise_reason(text, no_speech, threshold, reason):
    segment = Segment(0.0, 2.0, text, [], stats={"avg_logprob": -0.6, "no_speech_prob": no_speech})
    assert noise_reason(segment, threshold) == reason
