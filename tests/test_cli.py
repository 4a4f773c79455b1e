"""The command line end to end: real model, real speech, a bad file among good ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _words(text: str) -> list[str]:
    return "".join(c.lower() for c in text if c.isalnum() or c.isspace()).split()


@pytest.mark.slow
def test_transcribe_writes_one_record_per_input(tmp_path, data_dir, transcripts):
    bad = tmp_path / "not audio.wav"
    bad.write_text("this is a text file, not audio")
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{data_dir / 'sample_joe.flac'}\n{bad}\n{tmp_path / 'missing.flac'}\n")
    out = tmp_path / "out"
    proc = _run("transcribe", str(manifest), "--output-dir", str(out), "--formats", "json,txt,srt,vtt,tsv",
                "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}  # records come in completion order
    assert len(records) == 3 and sorted(by_name) == ["missing.flac", "not audio.wav", "sample_joe.flac"]
    good, not_audio, missing = (by_name[n] for n in ("sample_joe.flac", "not audio.wav", "missing.flac"))
    assert good["error"] is None and good["language"] == "en"
    assert _words(good["text"]) == _words(transcripts["sample_joe.flac"])
    assert abs(good["duration_s"] - 4.11) < 0.01
    assert good["segments"][0]["start"] == 0.0 and 3.0 < good["segments"][-1]["end"] <= 4.2
    assert not_audio["error"] and "\n" not in not_audio["error"] and not_audio["text"] == ""
    assert "not found" in missing["error"]
    stems = sorted(p.name for p in out.iterdir() if p.name not in ("results.jsonl", "summary.json"))
    assert [s.rsplit(".", 1)[1] for s in stems] == ["json", "srt", "tsv", "txt", "vtt"]
    txt = next(out.glob("*.txt")).read_text()
    assert _words(txt) == _words(transcripts["sample_joe.flac"])
    assert next(out.glob("*.srt")).read_text().startswith("1\n00:00:00,000 --> 00:00:0")


def test_bad_model_is_a_one_line_error(tmp_path, data_dir):
    proc = _run("transcribe", str(data_dir / "sample_joe.flac"), "--model", str(tmp_path / "nope"),
                "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("whisper-nnx: error:")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_convert_then_transcribe_from_converted(tmp_path, data_dir, transcripts):
    proc = _run("convert", "tiny.en", str(tmp_path / "tiny-nnx"), "--dtype", "float32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "tiny-nnx" / "whisper_nnx.json").is_file()
    proc = _run("transcribe", str(data_dir / "sample_espeak.flac"), "--model", str(tmp_path / "tiny-nnx"),
                "--output-dir", str(tmp_path / "o"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "o" / "results.jsonl").read_text())
    assert record["error"] is None
    reference = _words(transcripts["sample_espeak.flac"])
    hits = sum(w in reference for w in _words(record["text"]))
    assert hits >= len(reference) - 3  # espeak's voice is hard: a word or two may differ


@pytest.mark.slow
def test_resume_skips_inputs_with_records(tmp_path, data_dir):
    out = tmp_path / "out"
    joe, espeak, missing = (str(data_dir / "sample_joe.flac"), str(data_dir / "sample_espeak.flac"),
                            str(tmp_path / "missing.wav"))
    first = _run("transcribe", joe, missing, "--output-dir", str(out), "--beam-size", "0", "--quiet", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    with open(out / "results.jsonl", "a") as f:
        f.write('{"path": "cut sho')  # a record a kill cut in half: not counted as done
    second = _run("transcribe", joe, espeak, missing, "--output-dir", str(out), "--beam-size", "0", "--quiet",
                  "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]  # torn line gone
    assert sorted(Path(r["path"]).name for r in records[:2]) == ["missing.wav", "sample_joe.flac"]
    assert [Path(r["path"]).name for r in records[2:]] == ["sample_espeak.flac"]
