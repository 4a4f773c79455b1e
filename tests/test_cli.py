"""The command line end to end: real model, real speech, a bad file among good ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test runs whole CLI processes


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
    assert proc.returncode == 3, proc.stderr  # finished, with error records
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
    assert [r["error_kind"] for r in (good, not_audio, missing)] == [None, "input", "input"]
    stems = sorted(p.name for p in out.iterdir() if p.name not in ("results.jsonl", "summary.json",
                                                                   ".whisper-nnx.lock"))
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
    assert first.returncode == 3, first.stderr
    with open(out / "results.jsonl", "a") as f:
        f.write('{"path": "cut sho')  # a record a kill cut in half: not counted as done
    second = _run("transcribe", joe, espeak, missing, "--output-dir", str(out), "--beam-size", "0", "--quiet",
                  "--resume", cwd=tmp_path)
    assert second.returncode == 3, second.stderr  # missing.wav's input error stays (no --retry-errors)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]  # torn line gone
    assert sorted(Path(r["path"]).name for r in records[:2]) == ["missing.wav", "sample_joe.flac"]
    assert [Path(r["path"]).name for r in records[2:]] == ["sample_espeak.flac"]


def test_plain_run_is_quiet_and_verbose_brings_info_back(tmp_path, data_dir):
    """No INFO log lines by default (JAX's backend probing, the hub): warnings still show."""
    joe = str(data_dir / "sample_joe.flac")
    quiet = _run("transcribe", joe, "--output-dir", str(tmp_path / "a"), "--beam-size", "0", "--no-progress",
                 cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.splitlines()
    assert not [line for line in lines if line.startswith("I") or "Unable to initialize backend" in line], lines
    assert lines and lines[-1].startswith("whisper-nnx: 1 files")
    loud = _run("transcribe", joe, "--output-dir", str(tmp_path / "b"), "--beam-size", "0", "--no-progress", "-v",
                cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert any(line.startswith("I") for line in loud.stderr.splitlines()), loud.stderr


def test_bad_formats_fail_before_the_model_loads(tmp_path, data_dir):
    out = tmp_path / "out"
    proc = _run("transcribe", str(data_dir / "sample_joe.flac"), "--output-dir", str(out), "--formats", "json,pdf",
                "--model", str(tmp_path / "no-such-model"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown output format 'pdf'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "results.jsonl").exists()


@pytest.mark.parametrize("flags, named", [(["--vad"], "--vad"), ([], "--skip-non-speech"),
                                          (["--skip-non-speech", "off"], None)])
def test_vad_without_its_dependency_fails_once_at_start(tmp_path, data_dir, flags, named):
    """onnxruntime hidden from the interpreter: with --vad, or with the default skipping of
    non-speech, one clear error naming the flag, exit 2, no records; with skipping off the run
    needs no voice activity and goes on."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "onnxruntime.py").write_text("raise ImportError('onnxruntime is not installed')\n")
    out = tmp_path / "out"
    path = f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe",
                           str(data_dir / "sample_joe.flac"), str(data_dir / "sample_espeak.flac"), *flags,
                           "--output-dir", str(out), "--beam-size", "0"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    if named is None:
        assert proc.returncode == 0, proc.stderr
        assert len((out / "results.jsonl").read_text().splitlines()) == 2
        return
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "reinstall whisper-nnx" in proc.stderr
    assert not (out / "results.jsonl").exists()


def test_a_second_run_in_the_same_output_dir_is_refused(tmp_path, data_dir):
    from whisper_nnx.engine.results import RunLock

    out = tmp_path / "out"
    out.mkdir()
    with RunLock(out):
        proc = _run("transcribe", str(data_dir / "sample_joe.flac"), "--output-dir", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert "in use by another whisper-nnx run" in proc.stderr
    assert not (out / "results.jsonl").exists()


@pytest.mark.slow
def test_bad_manifest_lines_and_unwritable_outputs_are_records(tmp_path, data_dir, transcripts):
    """A .jsonl line without "path" (or not JSON) is that entry's input error; a transcript
    whose files cannot be written is a run error that --resume redoes; the run goes on."""
    from whisper_nnx.engine.sink import output_stem

    joe = str(data_dir / "sample_joe.flac")
    (tmp_path / "other").mkdir()  # espeak's files go to a folder of their own (--output-layout tree)
    espeak = str(shutil.copy(data_dir / "sample_espeak.flac", tmp_path / "other" / "sample_espeak.flac"))
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(json.dumps({"path": joe}) + "\n" + json.dumps({"file": "x.wav"}) + "\n" + "[1, 2\n"
                        + json.dumps({"path": espeak}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    folder = out / Path(output_stem(espeak, roots=[str(tmp_path)])).parent  # tree names start at the manifest's folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("")  # a file where the transcript's folder must go
    args = ("transcribe", str(manifest), "--output-dir", str(out), "--beam-size", "0", "--quiet", "--no-progress")
    first = _run(*args, cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    records = {r["path"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(records) == sorted([joe, espeak, f"{manifest}:2", f"{manifest}:3"])
    assert records[joe]["error"] is None
    assert records[f"{manifest}:2"]["error_kind"] == "input" and '"path"' in records[f"{manifest}:2"]["error"]
    assert records[f"{manifest}:3"]["error_kind"] == "input" and "not JSON" in records[f"{manifest}:3"]["error"]
    assert records[espeak]["error_kind"] == "run" and "writing outputs failed" in records[espeak]["error"]
    folder.unlink()
    second = _run(*args, "--resume", cwd=tmp_path)
    assert second.returncode == 3, second.stderr  # the two bad lines stay input errors
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    redone = [r for r in lines if r["path"] == espeak]
    assert len(redone) == 1 and redone[0]["error"] is None
    txt = next(name for name in redone[0]["files"] if name.endswith(".txt"))
    assert txt == "other/sample_espeak.txt"
    assert _words((out / txt).read_text()) == _words(redone[0]["text"]) and redone[0]["text"]


@pytest.mark.slow
def test_single_process_resume_merges_a_killed_multi_process_run(tmp_path, data_dir):
    """A multi-process run killed before its merge leaves results.process-*.jsonl: a plain
    --resume merges those records into results.jsonl (once) and does only what is left."""
    joe, espeak = str(data_dir / "sample_joe.flac"), str(data_dir / "sample_espeak.flac")
    out = tmp_path / "out"
    out.mkdir()
    done = {"path": joe, "text": "from process one", "language": "en", "duration_s": 4.11, "segments": [],
            "error": None, "error_kind": None}
    (out / "results.process-00001.jsonl").write_text(json.dumps(done) + "\n")
    proc = _run("transcribe", joe, espeak, "--output-dir", str(out), "--beam-size", "0", "--quiet", "--resume",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [joe, espeak]
    assert records[0]["text"] == "from process one" and records[1]["error"] is None
    assert not list(out.glob("results.process-*"))
