"""The output side from Python: records and their files exactly as the CLI writes them."""

from __future__ import annotations

import json

import pytest

from whisper_nnx.engine import records
from whisper_nnx.engine.progress import Progress
from whisper_nnx.engine.sink import ResultSink, SubtitleLayout, output_stem


def _transcript(path: str) -> dict:
    segments = [{"start": 0.0, "end": 1.5, "text": " Hello there.", "avg_logprob": -0.2, "compression_ratio": 1.1,
                 "no_speech_prob": 0.01, "temperature": 0.0}]
    return records.transcript(path, text="Hello there.", language="en", duration_s=1.5, segments=segments,
                              windows=1, tokens=[1, 2, 3])


def test_sink_writes_files_before_records_and_counts_failures(tmp_path):
    progress = Progress(3, enabled=False)
    shown = []
    with ResultSink(tmp_path, ("txt", "srt"), extra={"model": "tiny.en"}, progress=progress,
                    echo=shown.append) as sink:
        written = sink.write(_transcript("a.wav"))
        sink.write(records.failure("b.wav", "b.wav: file not found", records.INPUT))
        sink.write(records.duplicate("a.wav", 0))
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert lines == shown == [written, *lines[1:]]
    assert "tokens" not in lines[0] and all(r["model"] == "tiny.en" for r in lines)
    assert [r["error_kind"] for r in lines] == [None, "input", "duplicate"] and lines[2]["duplicate_of"] == 1
    assert (tmp_path / f"{output_stem('a.wav')}.txt").read_text().strip() == "Hello there."
    assert (tmp_path / f"{output_stem('a.wav')}.srt").read_text().startswith("1\n00:00:00,000 --> 00:00:01,500\n")
    assert [r["files"] for r in lines] == [["a.txt", "a.srt"], [], []]
    assert sink.failed == 1 and progress.files == 3 and progress.errors == 2


def test_a_transcript_whose_files_cannot_be_written_is_a_run_error(tmp_path):
    (tmp_path / "sub").write_text("")  # a file where the transcript's folder must go (tree layout)
    with ResultSink(tmp_path, ("txt",)) as sink:
        record = sink.write(_transcript("sub/a.wav"))
    assert record["error_kind"] == "run" and "writing outputs failed" in record["error"] and record["text"] == ""
    assert sink.failed == 1


def test_sink_refuses_unknown_formats_and_bad_layouts(tmp_path):
    with pytest.raises(ValueError, match="unknown output format 'pdf'"):
        ResultSink(tmp_path, ("json", "pdf"))
    with pytest.raises(ValueError, match="max_line_width"):
        SubtitleLayout(max_line_width=0)


def test_background_writes_hand_over_at_once_and_write_in_order(tmp_path):
    """The run's thread hands records over while the writer is still busy with an earlier one
    (its file writes and fsyncs off the device's path); leaving the block waits for all of them,
    written in the order handed over, as the sink alone writes them."""
    import threading

    from whisper_nnx.engine.sink import BackgroundWrites

    release, started = threading.Event(), threading.Event()
    shown = []

    def held(record):  # the writer stops at the first record until released
        started.set()
        release.wait(timeout=60)
        shown.append(record["path"])

    names = [f"{i}.wav" for i in range(5)]
    with BackgroundWrites(ResultSink(tmp_path, ("txt",), echo=held), depth=8) as sink:
        for name in names:
            sink.write(_transcript(name))
        assert started.wait(timeout=60) and shown == []  # all handed over; none written through yet
        release.set()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in lines] == shown == names
    assert all((tmp_path / f"{n[:-4]}.txt").read_text().strip() == "Hello there." for n in names)
    assert sink.failed == 0


def test_background_writes_raise_what_writing_raised(tmp_path):
    from whisper_nnx.engine.sink import BackgroundWrites

    def broken(record):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWrites(ResultSink(tmp_path, ("txt",), echo=broken)) as sink:
            sink.write(_transcript("a.wav"))
            sink.write(_transcript("b.wav"))
    # the first record's line was appended before its echo failed; nothing after the failure
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["a.wav"]
