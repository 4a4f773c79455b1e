"""Nothing lost: a failure that belongs to one file ends as that file's record and the run
goes on; a failing device batch is retried smaller so its batchmates are not lost;
`duration_s` is the file's own duration under voice activity; a run killed at several points
over a manifest with repeats and bad files resumes to exactly one record per listing.

Failures outside the device are injected by wrapping one step of the pipeline so that it
raises for one chosen file (a real file that makes these steps fail is exactly the bug this
guards against, so none is at hand); the device failure is a batch that raises whenever the
chosen file's window is in it, as an out-of-memory batch would."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cli_runs import cli_environment, complete_records, kill_after_records

from whisper_nnx.engine.audio import load_audio
from whisper_nnx.engine.longform import SequentialFile
from whisper_nnx.engine.transcribe import TranscribeOptions
from whisper_nnx.engine.windows import WindowPipeline

GREEDY = dict(language="en", beam_size=None, temperature=0.0, batch_size=4)


@pytest.fixture(scope="module")
def clips(data_dir):
    """joe, espeak, and the poisoned one (a 440 Hz tone with a little noise: it decodes)."""
    rng = np.random.default_rng(1)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * 6) / 16000)
            + 0.01 * rng.standard_normal(16000 * 6)).astype(np.float32)
    return [load_audio(data_dir / "sample_joe.flac"), load_audio(data_dir / "sample_espeak.flac"), tone]


@pytest.fixture(scope="module")
def clean(tiny, clips):
    return tiny.transcribe(clips[:2], TranscribeOptions.from_kwargs(**GREEDY))


def _is_poison(audio_or_job, poison: np.ndarray) -> bool:
    audio = getattr(audio_or_job, "audio", audio_or_job)  # a job, or a file's samples
    n = audio.n_samples if hasattr(audio, "n_samples") else audio.shape[0]
    return n == poison.shape[0]


def _check_isolated(records, clean, reason: str) -> None:
    assert [r["text"] for r in records[:2]] == [r["text"] for r in clean]
    assert all(r["error"] is None for r in records[:2])
    bad = records[2]
    assert bad["error_kind"] == "run" and reason in bad["error"] and bad["text"] == "", bad


@pytest.mark.slow
def test_a_failing_long_form_step_fails_only_its_file(tiny, clips, clean, monkeypatch):
    accept = SequentialFile.accept

    def failing_accept(self, request, window):
        if _is_poison(self, clips[2]):
            raise RuntimeError("step exploded")
        return accept(self, request, window)

    monkeypatch.setattr(SequentialFile, "accept", failing_accept)
    _check_isolated(tiny.transcribe(clips, TranscribeOptions.from_kwargs(**GREEDY)), clean, "long-form step failed")


@pytest.mark.slow
def test_a_failing_transcript_assembly_fails_only_its_file(tiny, clips, clean, monkeypatch):
    result = SequentialFile.result

    def failing_result(self, *args, **kwargs):
        if _is_poison(self, clips[2]):
            raise ValueError("cannot format a NaN time")
        return result(self, *args, **kwargs)

    monkeypatch.setattr(SequentialFile, "result", failing_result)
    records = tiny.transcribe(clips, TranscribeOptions.from_kwargs(**GREEDY))
    _check_isolated(records, clean, "assembling the transcript failed")


@pytest.mark.slow
def test_a_failing_preparation_fails_only_its_file(tiny, clips, clean, monkeypatch):
    prepare = WindowPipeline.prepare

    def failing_prepare(self, arrivals):
        if any(_is_poison(a.audio, clips[2]) for a in arrivals):
            raise RuntimeError("framing exploded")
        return prepare(self, arrivals)

    monkeypatch.setattr(WindowPipeline, "prepare", failing_prepare)
    _check_isolated(tiny.transcribe(clips, TranscribeOptions.from_kwargs(**GREEDY)), clean, "preparing the file failed")


@pytest.mark.slow
def test_a_file_failing_on_the_host_leaves_its_batchmates_prepared_together(tiny, clips, clean, monkeypatch):
    """Framing one file raises: that file fails, and the others are prepared in the same single
    call (its batched device calls, the same on every process of a multi-host run, go on)."""
    frame, prepare = WindowPipeline._frame, WindowPipeline.prepare
    calls = []

    def failing_frame(self, loaded):
        if _is_poison(loaded.audio, clips[2]):
            raise RuntimeError("framing exploded")
        return frame(self, loaded)

    def counted_prepare(self, arrivals):
        calls.append(len(arrivals))
        return prepare(self, arrivals)

    monkeypatch.setattr(WindowPipeline, "_frame", failing_frame)
    monkeypatch.setattr(WindowPipeline, "prepare", counted_prepare)
    _check_isolated(tiny.transcribe(clips, TranscribeOptions.from_kwargs(**GREEDY)), clean, "preparing the file failed")
    assert calls == [3]


@pytest.mark.slow
def test_a_failing_device_batch_is_retried_smaller(tiny, clips, clean, monkeypatch):
    """Every batch holding the poisoned window raises (as an out-of-memory batch would): its
    batchmates are decoded again in smaller batches, and only the poisoned file fails."""
    decode = WindowPipeline.decode
    calls = []

    def failing_decode(self, requests):
        calls.append(len(requests))
        if any(_is_poison(r.job, clips[2]) for r in requests):
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return decode(self, requests)

    monkeypatch.setattr(WindowPipeline, "decode", failing_decode)
    records = tiny.transcribe(clips, TranscribeOptions.from_kwargs(**GREEDY))
    _check_isolated(records, clean, "decoding failed")
    assert "out of memory" in records[2]["error"]
    assert calls[0] == 3 and 1 in calls  # the whole batch first, down to the poisoned window alone


@pytest.mark.slow
def test_duration_is_the_files_own_under_vad(tiny, clips):
    """With voice activity the decoder sees the speech only; the record's duration (and so
    the run's audio hours and speed) is still the file's."""
    silence = np.zeros(16000 * 10, np.float32)
    padded = np.concatenate([silence, clips[0], silence])
    options = TranscribeOptions.from_kwargs(**GREEDY, vad=True)
    records = tiny.transcribe([padded, np.zeros(16000 * 5, np.float32)], options)
    assert records[0]["error"] is None and "fox" in records[0]["text"]
    assert records[0]["duration_s"] == pytest.approx(padded.shape[0] / 16000, abs=1e-3)
    assert records[1]["error"] is None and records[1]["text"] == ""
    assert records[1]["duration_s"] == pytest.approx(5.0, abs=1e-3)


# --- killed at several points, resumed --------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    return cli_environment(tmp_path_factory.mktemp("jax-cache"))


@pytest.mark.slow
# The kill points are the two stages a run's records come in (measured): 1, the input errors
# (bad.wav, missing.wav: written before the model has decoded anything); 3, inside the burst of
# the first batch's records (each clip, then its duplicates), while the lecture is still decoding
# for 10 s more. (A kill after 5 records landed in that same burst, with no stage between.)
@pytest.mark.parametrize("kill_after", [1, 3])
def test_kill_at_any_point_then_resume_gives_one_record_per_listing(tmp_path, data_dir, cli_env, kill_after):
    joe, espeak, thanks = (str(data_dir / n) for n in ("sample_joe.flac", "sample_espeak.flac", "sample_thanks.flac"))
    lecture = str(data_dir / "longform" / "lecture.ogg")  # the slow one: the run is still going at each kill
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    missing = str(tmp_path / "missing.wav")
    entries = [joe, espeak, joe, str(bad), thanks, lecture, espeak, missing, "./" + os.path.relpath(joe, tmp_path)]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(entries) + "\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", str(manifest), "--output-dir", str(out),
            "--beam-size", "0", "--temperature-increment-on-fallback", "0", "--batch-size", "4", "--quiet",
            "--no-progress"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    running = kill_after_records(proc, out / "results.jsonl", kill_after, timeout=400)
    assert running, f"the run ended (rc {proc.returncode}) before its kill: {proc.stderr.read()[-2000:]}"
    before = complete_records(out / "results.jsonl")
    assert len(before) >= kill_after
    resume = subprocess.run([*args, "--resume"], cwd=tmp_path, env=cli_env, capture_output=True, text=True,
                            timeout=600)
    assert resume.returncode == 3, resume.stderr[-3000:]  # finished; bad.wav and missing.wav are input errors
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[:len(before)] == before
    assert len(records) == len(entries)
    by_kind = collections.defaultdict(list)
    for r in records:
        by_kind[r["error_kind"]].append(os.path.abspath(os.path.join(tmp_path, r["path"])))
    assert sorted(by_kind[None]) == sorted([joe, espeak, thanks, lecture])
    assert sorted(by_kind["input"]) == sorted([str(bad), missing])
    assert sorted(by_kind["duplicate"]) == sorted([joe, espeak, joe])
    texts = {os.path.basename(r["path"]): r["text"] for r in records if r["error"] is None}
    assert "fox" in texts["sample_joe.flac"] and "Stella" in texts["sample_espeak.flac"]
    assert "train" in texts["lecture.ogg"]
