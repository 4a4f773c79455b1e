"""results.jsonl bookkeeping without a model: what a resumed run still has to do after a kill
at any point, which errors it retries, a merge of per-process files cut short by a crash, and
the lock against two runs in one output directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from whisper_nnx.engine import records, results
from whisper_nnx.engine.inputs import Entry
from whisper_nnx.engine.records import RUN
from whisper_nnx.engine.results import plan_run


def _entries(names: list[str]) -> list[Entry]:
    return [Entry(name) for name in names]


def _transcript(path: str) -> dict:
    return records.transcript(path, text="hello", language="en", duration_s=1.0, segments=[], windows=1)


def _simulate(entries: list[str], written: list[dict]) -> list[dict]:
    """What the CLI writes for `entries` given `records` already written: the ready repeats
    first, then each transcribed entry followed by its repeats (a successful run)."""
    plan = plan_run(_entries(entries), written)
    out = [records.duplicate(entry, first) for entry, _, first in plan.ready]
    for entry in plan.todo:
        out.append(_transcript(entry.name))
        out += [records.duplicate(e, first) for e, _, first in plan.repeats_of(entry.name)]
    assert not plan.repeats, "a repeat whose first listing is neither done nor to do"
    return out


@pytest.mark.parametrize("entries", [
    ["a.wav", "b.wav", "a.wav", "c.wav", "a.wav", "./b.wav"],
    ["a.wav", "a.wav", "a.wav", "b.wav"],
    ["x.wav", "y.wav", "z.wav", "y.wav"],
])
def test_a_kill_after_any_record_then_resume_gives_one_record_per_listing(entries):
    """Every kill point of a run (after 0, 1, ... records), then a resume: exactly one
    transcript per file and one duplicate record per repeat."""
    full = _simulate(entries, [])
    unique = {os.path.abspath(e) for e in entries}
    for kill_after in range(len(full) + 1):
        written = full[:kill_after]
        final = written + _simulate(entries, written)
        transcripts = [os.path.abspath(r["path"]) for r in final if r["error"] is None]
        duplicates = [r for r in final if records.error_kind(r) == records.DUPLICATE]
        assert sorted(transcripts) == sorted(unique), (kill_after, final)
        assert len(duplicates) == len(entries) - len(unique), (kill_after, final)
        assert len(final) == len(entries)


def test_the_old_order_loses_a_transcript_no_more():
    """The defect: a duplicate record written before the first listing's transcript used to
    count that listing as done, so a kill in between lost the transcript for good."""
    entries = ["a.wav", "b.wav", "a.wav"]
    written = [records.duplicate("a.wav", 0)]
    assert [e.name for e in plan_run(_entries(entries), written).todo] == ["a.wav", "b.wav"]
    # Records from before error kinds existed are read by their message.
    legacy = {"path": "a.wav", "error": "a.wav: duplicate entry: the same file is listed as entry 1, "
                                         "transcribed once there"}
    assert [e.name for e in plan_run(_entries(entries), [legacy]).todo] == ["a.wav", "b.wav"]


def test_run_errors_are_retried_input_errors_only_when_asked(tmp_path):
    out = tmp_path
    lines = [_transcript("a.wav"),
             {"path": "b.wav", "error": "b.wav: out of memory", "error_kind": RUN},
             {"path": "c.wav", "error": "c.wav: file not found", "error_kind": "input"},
             records.duplicate("a.wav", 0)]
    (out / "results.jsonl").write_text("".join(map(results.record_line, lines)))
    assert results.drop_retried(out, retry_errors=False) == 1
    kept = list(results.read_records(out / "results.jsonl"))
    assert [r["path"] for r in kept] == ["a.wav", "c.wav", "a.wav"]
    assert [e.name for e in plan_run(_entries(["a.wav", "b.wav", "c.wav", "a.wav"]), kept).todo] == ["b.wav"]
    assert results.drop_retried(out, retry_errors=True) == 1
    again = plan_run(_entries(["a.wav", "b.wav", "c.wav", "a.wav"]), results.read_records(out / "results.jsonl"))
    assert [e.name for e in again.todo] == ["b.wav", "c.wav"]


def test_a_line_holds_the_record_without_its_tokens_and_reads_back():
    record = records.transcript("a.wav", text="héllo", language="en", duration_s=1.0, segments=[], windows=1,
                                tokens=[50364, 7, 50414], language_probs={"en": 0.9})
    line = results.record_line(record)
    assert line.endswith("}\n") and line.count("\n") == 1 and "héllo" in line  # UTF-8, not escaped
    back = results.parse_record(line)
    assert back == {"path": "a.wav", "text": "héllo", "language": "en", "duration_s": 1.0, "segments": [],
                    "windows": 1, "error": None, "error_kind": None, "language_probs": {"en": 0.9}}
    assert record["tokens"] == [50364, 7, 50414] and dict(record) == {**back, "tokens": [50364, 7, 50414]}
    assert results.parse_record(line[:-10]) is None  # cut short by a kill
    assert results.parse_record('{"text": "no path"}') is None and results.parse_record("[1, 2]") is None


def _process_files(out, n: int = 2) -> list[str]:
    lines = []
    for p in range(n):
        records = [_transcript(f"p{p}-{i}.wav") for i in range(3)]
        (out / f"results.process-{p:05d}.jsonl").write_text("".join(map(results.record_line, records)))
        lines += [r["path"] for r in records]
    return lines


@pytest.mark.parametrize("crash", ["before_write", "mid_write", "after_write"])
def test_a_merge_cut_short_finishes_without_duplicates(tmp_path, monkeypatch, crash):
    """A crash between the merged file's write and the removal of its sources, before the
    write, or in the middle of appending the parts: the next start finishes the merge and
    every record is there exactly once."""
    out = tmp_path
    (out / "results.jsonl").write_text(results.record_line(_transcript("old.wav")))
    expected = ["old.wav", *_process_files(out)]

    def crash_at_finish(*args):
        raise KeyboardInterrupt("killed")

    if crash == "after_write":
        monkeypatch.setattr(results, "_finish", crash_at_finish)
    elif crash == "before_write":
        def crash_on_merged(target, sources):
            raise KeyboardInterrupt("killed")

        monkeypatch.setattr(results, "_append_files", crash_on_merged)
    else:
        def crash_half_way(target, sources):  # the first part appended, half of the second
            with open(target, "ab") as handle:
                handle.write(sources[0].read_bytes() + sources[1].read_bytes()[:40])
            raise KeyboardInterrupt("killed")

        monkeypatch.setattr(results, "_append_files", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        results.merge_process_results(out)
    monkeypatch.undo()
    assert (out / results.MERGE_MARK).exists()
    results.merge_process_results(out)  # what the next start does
    paths = [r["path"] for r in results.read_records(out / "results.jsonl")]
    assert paths == expected
    assert not results.process_files(out) and not (out / results.MERGE_MARK).exists()


def test_a_second_run_in_the_same_directory_is_refused(tmp_path):
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
    with results.RunLock(tmp_path):  # the kernel released the dead holder's lock
        pass
