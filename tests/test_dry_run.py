"""`--dry-run` (engine/dry_run.py): the corpus listed and the resume plan counted, without the
model and without writing anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import write_wav

from whisper_nnx.engine import results
from whisper_nnx.engine.cli import main
from whisper_nnx.engine.inputs import expand_inputs
from whisper_nnx.engine.run import BulkRun


def _corpus(tmp_path: Path) -> tuple[list[str], Path]:
    """corpus/ with a.wav (1 s) and b.wav (2 s); list.jsonl naming a missing file, a.wav again
    and a line without a path; out/results.jsonl: a.wav's transcript and b.wav's run error."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_wav(corpus / "a.wav", np.zeros(16000, dtype=np.float32))
    write_wav(corpus / "b.wav", np.zeros(32000, dtype=np.float32))
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in (
        {"path": str(corpus / "gone.wav"), "text": "gone"}, {"path": str(corpus / "a.wav")}, {"nopath": 1})) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text(
        json.dumps({"path": str(corpus / "a.wav"), "text": "hi", "error": None, "error_kind": None}) + "\n"
        + json.dumps({"path": str(corpus / "b.wav"), "text": "", "error": "out of memory", "error_kind": "run"})
        + "\n")
    return [str(corpus), str(manifest)], out


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def _dry(args: list[str], capsys, monkeypatch) -> tuple[int, list[str]]:
    def no_run(*_a, **_k):
        raise AssertionError("a dry run started the run")

    monkeypatch.setattr(BulkRun, "run", no_run)
    code = main(args)
    return code, capsys.readouterr().out.splitlines()


def _line(lines: list[str], head: str) -> str:
    return next(line for line in lines if line.startswith(head))


def test_dry_run_counts_and_writes_nothing(tmp_path, capsys, monkeypatch):
    inputs, out = _corpus(tmp_path)
    before = _snapshot(out)
    code, lines = _dry(["transcribe", *inputs, "--output-dir", str(out), "--resume", "--dry-run"], capsys, monkeypatch)
    assert code == 0
    assert _snapshot(out) == before
    assert _line(lines, "entries:") == "entries: 5 (1 with a reference text)"
    assert _line(lines, "unreadable:").startswith("unreadable: 1 entries")
    assert lines[lines.index(_line(lines, "unreadable:")) + 1] == \
        f'  {inputs[1]}:3: manifest line has no "path" or "audio_filepath" string'
    assert _line(lines, "missing:").startswith("missing: 1 of 3 local files")
    assert f"  {tmp_path}/corpus/gone.wav" in lines
    assert _line(lines, "audio:").startswith("audio: 0.001 h (3.0 s) in 2 file headers read")
    assert _line(lines, "duplicates:").startswith("duplicates: 1 entries")
    assert _line(lines, "output:") == (f"output: {out} holds 2 records: 1 transcripts, 0 input errors, "
                                       "1 run errors, 0 duplicate records")
    assert _line(lines, "plan:") == ("plan: 1 entries already have a record; 4 to write "
                                     "(3 to transcribe or record as errors, 1 duplicate records)")
    assert not any("the run would stop" in line for line in lines)


def test_dry_run_plan_matches_plan_run(tmp_path, capsys, monkeypatch):
    """The streamed counts are plan_run's, on the records a resume keeps."""
    inputs, out = _corpus(tmp_path)
    entries = list(expand_inputs(inputs))
    kept = [r for r in results.all_records(out) if not results.is_retried(r, False)]
    plan = results.plan_run(entries, kept)
    _, lines = _dry(["transcribe", *inputs, "--output-dir", str(out), "--dry-run"], capsys, monkeypatch)
    assert _line(lines, "plan:").startswith(f"plan: {plan.skipped} entries already have a record; "
                                            f"{len(plan.todo) + len(plan.ready) + len(plan.repeats)} to write "
                                            f"({len(plan.todo)} to transcribe")
    assert "  the run would stop: the folder holds results (add --resume); the plan below is --resume's" in lines


def test_dry_run_new_folder_not_created(tmp_path, capsys, monkeypatch):
    inputs, _ = _corpus(tmp_path)
    out = tmp_path / "new"
    code, lines = _dry(["eval", *inputs, "--output-dir", str(out), "--dry-run", "--dry-run-probe", "1"],
                       capsys, monkeypatch)
    assert code == 0 and not out.exists()
    assert _line(lines, "output:") == f"output: {out} does not exist yet"
    assert _line(lines, "audio:").startswith("audio: 0.000 h (1.0 s) in 1 file headers read (--dry-run-probe 1); "
                                             "about 0.0 h for all 2 local files")
    assert _line(lines, "plan:").startswith("plan: 0 entries already have a record; 5 to write (4 to transcribe")


def test_dry_run_retry_errors_counts_input_errors(tmp_path, capsys, monkeypatch):
    inputs, out = _corpus(tmp_path)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps({"path": str(tmp_path / "corpus" / "gone.wav"), "text": "", "error": "file not found",
                            "error_kind": "input"}) + "\n")
    args = ["transcribe", *inputs, "--output-dir", str(out), "--resume", "--dry-run"]
    _, kept = _dry(args, capsys, monkeypatch)
    _, retried = _dry([*args, "--retry-errors"], capsys, monkeypatch)
    assert _line(kept, "plan:").startswith("plan: 2 entries already have a record; 3 to write")
    assert _line(retried, "plan:").startswith("plan: 1 entries already have a record; 4 to write")
    assert "input errors retried (--retry-errors)" in _line(retried, "  resume:")


@pytest.mark.slow
def test_dry_run_imports_no_model(tmp_path):
    """In a fresh process: neither JAX nor the model's code is imported."""
    inputs, out = _corpus(tmp_path)
    code = ("import sys; from whisper_nnx.engine.cli import main; "
            f"rc = main(['transcribe', *{inputs!r}, '--output-dir', {str(out)!r}, '--dry-run']); "
            "loaded = [m for m in ('jax', 'flax', 'whisper_nnx.engine.transcribe') if m in sys.modules]; "
            "print('RC', rc, 'LOADED', loaded)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "RC 0 LOADED []", proc.stderr
