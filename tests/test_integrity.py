"""A run's records are all there, read back whole, named and keyed right (issue 25): records whose
text holds Unicode line separators, dataset rows whose --id-column values repeat, a producer that
loses an entry, exit statuses after records exist, the lock file, a killed run's temp files.
No model: a stand-in producer makes the records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_nnx.engine import records, results
from whisper_nnx.engine.run import EXIT_FAILED, EXIT_OK, BulkRun

SEPARATORS = "one\u2028two\u2029three\x85four"


class _Stand:
    """Records without a model: each entry's text is `text(name)`; entries named in `skip` get none."""

    def __init__(self, text=lambda name: Path(name).stem, skip: tuple[str, ...] = ()):
        self.asked: list[str] = []
        self.text, self.skip = text, skip

    def start(self, options) -> dict:
        return {"model": "stand-in"}

    def records(self, entries, options):
        for entry in entries:
            self.asked.append(entry.name)
            if Path(entry.name).name in self.skip:
                continue
            yield records.transcript(entry.name, text=self.text(entry.name), language="en", duration_s=1.0,
                                     segments=[], windows=1, tokens=[1])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_bytes().split(b"\n") if line]


@pytest.fixture()
def audio_files(tmp_path) -> list[str]:
    names = []
    for name in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / name).write_bytes(b"stand-in")
        names.append(str(tmp_path / name))
    return names


# 1. U+2028 / U+2029 / U+0085 in a record


def test_records_with_unicode_line_separators_are_read_back_and_not_redone(tmp_path, audio_files):
    a, b, _ = audio_files
    out = tmp_path / "out"
    first = _Stand(text=lambda name: SEPARATORS)
    assert BulkRun([a, b], out, producer=first, formats=(), progress=False).run().exit_code == EXIT_OK
    assert [r["text"] for r in results.read_records(out / "results.jsonl")] == [SEPARATORS, SEPARATORS]
    again = _Stand()
    outcome = BulkRun([a, b], out, producer=again, formats=(), resume=True, progress=False).run()
    assert outcome.exit_code == EXIT_OK and again.asked == []
    assert [r["text"] for r in _records(out)] == [SEPARATORS, SEPARATORS]


def test_raw_separators_written_by_an_older_version_still_read_back(tmp_path):
    """A line holding the separators raw (json.dumps(ensure_ascii=False) before the fix)."""
    done = records.as_dict(records.transcript("a.wav", text=SEPARATORS, language="en", duration_s=1.0,
                                              segments=[], windows=1))
    retried = records.as_dict(records.failure("b.wav", "b.wav: out of memory", records.RUN))
    lines = [json.dumps(done, ensure_ascii=False), json.dumps(retried, ensure_ascii=False)]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert [r["path"] for r in results.read_records(tmp_path / "results.jsonl")] == ["a.wav", "b.wav"]
    assert results.drop_retried(tmp_path, retry_errors=False) == 1
    assert [r["text"] for r in results.read_records(tmp_path / "results.jsonl")] == [SEPARATORS]


def test_a_record_line_has_no_character_that_splits_lines():
    record = records.transcript("a.wav", text=SEPARATORS, language="en", duration_s=1.0, segments=[], windows=1)
    line = results.record_line(record)
    assert line.splitlines() == [line[:-1]] and json.loads(line)["text"] == SEPARATORS


# 2. --id-column values are names, not identities


def _id_tables(tmp_path: Path, ids=(0, 1)) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = []
    for split in ("train", "test"):
        path = tmp_path / f"{split}.parquet"
        pq.write_table(pa.table({"audio": pa.array([b"x"] * len(ids), pa.binary()), "id": list(ids),
                                 "text": [f"{split} {i}" for i in ids]}), path)
        paths.append(str(path))
    return paths


def test_repeated_id_column_values_are_all_transcribed_and_reported(tmp_path):
    from whisper_nnx.engine.inputs import SourceOptions

    train, test = _id_tables(tmp_path)
    out = tmp_path / "out"
    first = _Stand(text=lambda name: name)
    outcome = BulkRun([train, test], out, producer=first, formats=("txt",), sources=SourceOptions(id_column="id"),
                      progress=False).run()
    assert outcome.exit_code == EXIT_OK
    written = _records(out)
    assert len(written) == 4 and all(r["error"] is None for r in written)
    assert sorted(r["path"] for r in written) == ["0", "0", "1", "1"]  # the records carry the ids
    assert sorted(r["row"] for r in written) == sorted([f"{train}:0", f"{train}:1", f"{test}:0", f"{test}:1"])
    assert outcome.summary["repeated_names"] == 2
    again = _Stand()
    outcome = BulkRun([train, test], out, producer=again, formats=("txt",), sources=SourceOptions(id_column="id"),
                      resume=True, progress=False).run()
    assert outcome.exit_code == EXIT_OK and again.asked == [] and len(_records(out)) == 4


def test_a_table_listed_twice_is_transcribed_once_with_duplicate_records(tmp_path):
    from whisper_nnx.engine.inputs import SourceOptions

    train, _ = _id_tables(tmp_path)
    out = tmp_path / "out"
    stand = _Stand()
    outcome = BulkRun([train, train], out, producer=stand, formats=(), sources=SourceOptions(id_column="id"),
                      progress=False).run()
    assert outcome.exit_code == EXIT_OK and len(stand.asked) == 2
    kinds = sorted(str(r["error_kind"]) for r in _records(out))
    assert kinds == ["None", "None", "duplicate", "duplicate"]
    assert all(r["row"].startswith(train) for r in _records(out))
    again = _Stand()
    assert BulkRun([train, train], out, producer=again, formats=(), sources=SourceOptions(id_column="id"),
                   resume=True, progress=False).run().exit_code == EXIT_OK
    assert again.asked == [] and len(_records(out)) == 4


def test_two_plain_listings_of_one_file_stay_one_transcription(tmp_path, audio_files):
    a, _, _ = audio_files
    out = tmp_path / "out"
    stand = _Stand()
    assert BulkRun([a, a], out, producer=stand, formats=(), progress=False).run().exit_code == EXIT_OK
    assert stand.asked == [a] and [r["error_kind"] for r in _records(out)] == [None, "duplicate"]


# 3. the run checks that every entry has its record


def test_a_producer_that_skips_an_entry_fails_the_run_naming_it(tmp_path, audio_files):
    a, b, c = audio_files
    out = tmp_path / "out"
    outcome = BulkRun([a, b, c], out, producer=_Stand(skip=("b.wav",)), formats=(), progress=False).run()
    assert outcome.exit_code == EXIT_FAILED
    assert outcome.summary["missing"] == 1 and b in outcome.line() and "1 entries have no record" in outcome.line()
    again = _Stand()  # a resume finishes it
    outcome = BulkRun([a, b, c], out, producer=again, formats=(), resume=True, progress=False).run()
    assert outcome.exit_code == EXIT_OK and again.asked == [b] and outcome.summary["missing"] == 0


# 4. exit 2 only before any record


def test_a_parquet_write_failing_after_records_exits_1(tmp_path, audio_files, monkeypatch, capsys):
    pytest.importorskip("pyarrow")
    import pyarrow as pa

    from whisper_nnx.engine import cli, results_table

    def broken(out, written):
        raise pa.ArrowInvalid("cannot convert")

    monkeypatch.setattr(results_table, "write_parquet", broken)
    monkeypatch.setattr(cli, "_producer", lambda args: _Stand())
    out = tmp_path / "out"
    code = cli.main(["transcribe", *audio_files, "--output-dir", str(out), "--formats", "txt,parquet",
                     "--no-progress", "--quiet", "--skip-non-speech", "off"])
    assert code == 1 and len(_records(out)) == 3
    assert "cannot convert" in capsys.readouterr().err


def test_a_bad_option_is_still_exit_2(tmp_path, audio_files):
    from whisper_nnx.engine import cli

    code = cli.main(["transcribe", audio_files[0], "--output-dir", str(tmp_path / "out"), "--formats", "nope"])
    assert code == 2 and not (tmp_path / "out" / "results.jsonl").exists()


# 5. the lock: a lock file opened for writing


def test_the_run_lock_is_held_on_a_writable_lock_file(tmp_path):
    import fcntl

    with results.RunLock(tmp_path) as lock:
        assert (tmp_path / results.LOCK_FILE).is_file()
        assert fcntl.fcntl(lock.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        assert os.fstat(lock.fd).st_ino == (tmp_path / results.LOCK_FILE).stat().st_ino
        with pytest.raises(results.RunLocked):  # another open of the file in this process too
            with results.RunLock(tmp_path):
                pass
    with results.RunLock(tmp_path):
        pass


def test_a_lock_held_by_another_process_refuses_and_a_kill_frees_it(tmp_path):
    code = ("import sys, time; from pathlib import Path; from whisper_nnx.engine.results import RunLock\n"
            "with RunLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(results.RunLocked, match="in use by another whisper-nnx run"):
            with results.RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with results.RunLock(tmp_path):  # the kernel released it; the file may stay
        pass


# 6. temp files of a killed run


def test_a_killed_runs_temp_files_are_removed_at_the_next_start(tmp_path, audio_files):
    a, b, _ = audio_files
    out = tmp_path / "out"
    assert BulkRun([a], out, producer=_Stand(), formats=("txt",), progress=False).run().exit_code == EXIT_OK
    (out / "sub").mkdir()  # an output layout with folders
    stale = [out / ".results.jsonl.0a1b2c3d.tmp", out / ".a-12345678.txt.deadbeef.tmp",
             out / "sub" / ".a.json.0123abcd.tmp", out / "results.parquet.tmp"]
    for path in stale:
        path.write_text("half")
    keep = [out / ".hidden.tmp", out / "notes.tmp", out / ".x.ZZZZZZZZ.tmp"]  # not atomic_write_text's
    for path in keep:
        path.write_text("mine")
    assert BulkRun([a, b], out, producer=_Stand(), formats=("txt",), resume=True, progress=False).run().exit_code == 0
    assert [p.exists() for p in stale] == [False] * 4 and all(p.exists() for p in keep)


def test_eval_scores_each_row_whose_id_repeats_against_its_own_record(tmp_path):
    pytest.importorskip("jiwer")
    from whisper_nnx.engine import evaluation
    from whisper_nnx.engine.inputs import SourceOptions, expand_inputs

    train, test = _id_tables(tmp_path)
    out = tmp_path / "out"
    entries = list(expand_inputs([train, test], SourceOptions(id_column="id", text_column="text")))
    stand = _Stand(text=lambda name: {e.row: e.text for e in entries}[name])  # each row's own reference
    assert BulkRun([train, test], out, producer=stand, formats=(), progress=False,
                   sources=SourceOptions(id_column="id", text_column="text")).run().exit_code == EXIT_OK
    scored = evaluation.score(entries, _records(out))
    assert scored["wer"] == 0.0 and scored["inputs"] == 4 and scored["words"] == 8
