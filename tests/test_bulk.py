"""Bulk transcription through the command line: a corpus of good and broken inputs, a run killed
part-way and resumed, and a resume with nothing left to do.

The contract checked (`whisper-nnx transcribe INPUT... --output-dir DIR`):

- `DIR/results.jsonl` holds exactly one JSON object per input entry (an entry a manifest lists
  twice gets a second record whose `error` says it duplicates an earlier entry), in completion
  order, with `path` (as given), `text`, `language`, `duration_s`, `segments` and `error` (null
  or one line);
- every good input gets the files its record lists (`files`: one per format, none shared), nothing else does;
- `DIR/summary.json` has `files`, `errors`, `audio_hours`, `wall_s` and `rtfx` (audio s / wall s);
- `--resume` skips entries that have a record, redoes the rest and drops a last line a kill cut
  short, so every line of the final file parses;
- the exit status is 3 when the run finished with error records (0 when every input has a
  transcript), however many inputs fail.

The CLI runs as a subprocess on tiny.en (converted once per module) with greedy decoding and
no temperature fallback, sharing one JAX compilation cache, to keep the module to about two
minutes on two CPU cores.

The unreadable input: as root a chmod 000 file is still readable (CAP_DAC_OVERRIDE), and the
CLI cannot run as `nobody` because the venv's interpreter lives under /root (mode 0700), so
the CLI runs as root with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding
set: file modes then apply to it as to any owner.
"""

from __future__ import annotations

import collections
import ctypes
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runs import cli_environment, complete_records, kill_after_records
from fixtures.make_bad_inputs import build_mixed_corpus

FORMATS = ("json", "txt", "srt", "vtt", "tsv")
RECORD_KEYS = {"path", "text", "language", "duration_s", "segments", "error"}
SUMMARY_KEYS = {"files", "errors", "audio_hours", "wall_s", "rtfx"}
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_dac_capabilities() -> None:
    """preexec_fn: root without the capabilities that ignore file modes (kept across exec
    only through the bounding set, so drop them there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _preexec():
    return _drop_dac_capabilities if os.geteuid() == 0 else None


def _modes_apply(path: Path) -> bool:
    """Whether a CLI subprocess is refused reading `path` (chmod 000)."""
    try:
        probe = subprocess.run([sys.executable, "-c", f"open({str(path)!r}, 'rb')"], preexec_fn=_preexec(),
                               capture_output=True, timeout=60)
    except subprocess.SubprocessError:  # prctl refused (no CAP_SETPCAP)
        return False
    return probe.returncode != 0 and b"PermissionError" in probe.stderr


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """The subprocesses' environment: offline, and one JAX compilation cache for the module."""
    return cli_environment(tmp_path_factory.mktemp("jax-cache"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, cli_env) -> Path:
    """tiny.en converted to whisper-nnx's fast-loading float32 form, once per module."""
    out = tmp_path_factory.mktemp("models") / "tiny-nnx"
    proc = subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "convert", "tiny.en", str(out),
                           "--dtype", "float32"], env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def _args(model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", "--model", str(model),
            "--output-dir", str(out), "--beam-size", "0", "--temperature-increment-on-fallback", "0", "--quiet",
            *extra]


def _run(args: list[str], env: dict, cwd: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_preexec())


def _words(text: str) -> list[str]:
    return "".join(c.lower() for c in text if c.isalnum() or c.isspace()).split()


def _hits(text: str, reference: str) -> tuple[int, int]:
    """(reference words found in `text`, reference words)."""
    said = set(_words(text))
    reference_words = _words(reference)
    return sum(w in said for w in reference_words), len(reference_words)


def _records(results: Path) -> list[dict]:
    """Every line of results.jsonl as JSON: a line that does not parse fails the test."""
    lines = results.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            pytest.fail(f"{results.name} line {number} of {len(lines)} is not JSON ({err}): {line[:120]!r}")
    return records


# --- 1. a corpus of good and bad inputs ---------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, tiny_model, cli_env, transcripts, data_dir):
    """Builds the mixed corpus, lists it in a .txt manifest (one entry twice), a .jsonl
    manifest, a file argument and a directory argument, and transcribes it all in one run."""
    root = tmp_path_factory.mktemp("mixed")
    cases = build_mixed_corpus(root / "corpus", transcripts)
    if "unreadable" in cases and not _modes_apply(cases["unreadable"].path):
        cases.pop("unreadable").path.unlink()
        pytest.fail("cannot make a file unreadable to the CLI (root without CAP_SETPCAP?)")
    # A directory argument with one good clip in it (searched for media files).
    folder = root / "folder"
    folder.mkdir()
    hello = folder / "joe_hello.flac"
    hello.write_bytes((data_dir / "corpus" / "joe_hello.flac").read_bytes())

    names = list(cases)
    in_jsonl = ["unicode", "48k_stereo", "nan_inf", "png"]
    on_command_line = "video_only"
    in_txt = [n for n in names if n not in in_jsonl and n != on_command_line]
    txt_entries = [str(cases[n].path) for n in in_txt] + [str(cases["joe"].path)]  # joe listed twice
    (root / "list.txt").write_text("".join(p + "\n" for p in txt_entries), encoding="utf-8")
    jsonl_entries = [str(cases[n].path) for n in in_jsonl]
    (root / "list.jsonl").write_text("".join(json.dumps({"path": p}, ensure_ascii=False) + "\n"
                                             for p in jsonl_entries), encoding="utf-8")
    entries = txt_entries + jsonl_entries + [str(cases[on_command_line].path), str(hello)]

    out = root / "out"
    started = time.monotonic()
    proc = _run(_args(tiny_model, out, "--formats", ",".join(FORMATS), str(root / "list.txt"),
                      str(root / "list.jsonl"), str(cases[on_command_line].path), str(folder)), cli_env, cwd=root)
    return {"proc": proc, "out": out, "cases": cases, "entries": entries, "hello": str(hello),
            "wall_s": time.monotonic() - started}


@pytest.mark.slow
def test_mixed_corpus_one_record_per_entry(mixed_run):
    proc, out, entries = mixed_run["proc"], mixed_run["out"], mixed_run["entries"]
    assert proc.returncode == 3, proc.stderr[-3000:]  # finished, with error records
    records = _records(out / "results.jsonl")
    got = collections.Counter(r.get("path") for r in records)
    want = collections.Counter(entries)
    assert got == want, f"missing: {dict(want - got)}, extra: {dict(got - want)}"
    for r in records:
        assert RECORD_KEYS <= set(r), f"{r.get('path')}: record lacks {RECORD_KEYS - set(r)}"
        assert r["error"] is None or (isinstance(r["error"], str) and r["error"].strip()
                                      and "\n" not in r["error"] and "\r" not in r["error"]), r


@pytest.mark.slow
def test_mixed_corpus_bad_inputs_get_one_line_reasons(mixed_run):
    cases, records = mixed_run["cases"], _records(mixed_run["out"] / "results.jsonl")
    by_path: dict[str, list[dict]] = collections.defaultdict(list)
    for r in records:
        by_path[r["path"]].append(r)
    problems = []
    for name, case in cases.items():
        if case.error is None:
            continue
        found = by_path.get(str(case.path), [])
        if len(found) != 1:
            problems.append(f"{name}: {len(found)} records")
            continue
        r = found[0]
        error = r["error"] or ""
        if not error.strip() or "\n" in error:
            problems.append(f"{name}: error {error!r} is not one non-empty line")
        elif not any(k in error.lower() for k in case.error):
            problems.append(f"{name}: error {error!r} mentions none of {case.error}")
        if r["text"] != "" or r["segments"]:
            problems.append(f"{name}: an error record with text {r['text']!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_mixed_corpus_duplicate_entry(mixed_run):
    joe = str(mixed_run["cases"]["joe"].path)
    records = [r for r in _records(mixed_run["out"] / "results.jsonl") if r["path"] == joe]
    assert len(records) == 2, f"{len(records)} records for an entry listed twice"
    good = [r for r in records if r["error"] is None]
    dup = [r for r in records if r["error"] is not None]
    assert len(good) == 1 and len(dup) == 1, [r["error"] for r in records]
    assert "duplicate" in dup[0]["error"].lower(), dup[0]["error"]
    assert dup[0]["text"] == ""


@pytest.mark.slow
def test_mixed_corpus_good_inputs_transcribed(mixed_run, transcripts):
    cases, out = mixed_run["cases"], mixed_run["out"]
    records = _records(out / "results.jsonl")
    first = {}
    for r in records:
        if r["error"] is None:
            first.setdefault(r["path"], r)
    problems = []
    for name, case in cases.items():
        if case.error is not None:
            continue
        r = first.get(str(case.path))
        if r is None:
            problems.append(f"{name}: no successful record")
            continue
        if case.duration_s is not None and abs(r["duration_s"] - case.duration_s) > 0.02:
            problems.append(f"{name}: duration_s {r['duration_s']} != {case.duration_s}")
        if case.reference is not None:
            hits, n = _hits(r["text"], case.reference)
            slack = 3 if name == "unicode" else 1  # espeak's voice is hard for tiny.en
            if hits < n - slack:
                problems.append(f"{name}: {hits}/{n} reference words in {r['text']!r}")
            if r["language"] != "en" or not r["segments"]:
                problems.append(f"{name}: language {r['language']!r}, {len(r['segments'])} segments")
        if case.empty_text and (r["text"] != "" or r["segments"]):
            problems.append(f"{name}: silence transcribed as {r['text'][:200]!r}")
    hello = first.get(mixed_run["hello"])
    if hello is None or _hits(hello["text"], "Hello there.")[0] < 2:
        problems.append(f"directory input: {hello}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_mixed_corpus_output_files(mixed_run):
    out = mixed_run["out"]
    records = _records(out / "results.jsonl")
    good = [r for r in records if r["error"] is None]
    assert all(sorted(Path(f).suffix[1:] for f in r["files"]) == sorted(FORMATS) for r in good)
    assert all(not r["files"] for r in records if r["error"] is not None)
    want = {f for r in good for f in r["files"]} | {"results.jsonl"}
    assert len(want) == len(good) * len(FORMATS) + 1  # no two records share a file
    have = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"summary.json", ".whisper-nnx.lock"}
    assert have == want, f"missing: {sorted(want - have)}, unexpected: {sorted(have - want)}"
    silent = next(r for r in good if r["path"] == str(mixed_run["cases"]["silent_hour"].path))
    txt = next(f for f in silent["files"] if f.endswith(".txt"))
    assert Path(txt).stem == Path(silent["path"]).stem  # the input's own name, as openai-whisper writes it
    assert (out / txt).read_text(encoding="utf-8").strip() == ""


@pytest.mark.slow
def test_mixed_corpus_summary(mixed_run):
    out = mixed_run["out"]
    records = _records(out / "results.jsonl")
    assert (out / "summary.json").is_file(), "no summary.json"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert SUMMARY_KEYS <= set(summary), f"summary lacks {SUMMARY_KEYS - set(summary)}"
    assert summary["files"] == len(mixed_run["entries"]) == len(records)
    assert summary["errors"] == sum(r["error"] is not None for r in records)
    audio_s = sum(r["duration_s"] for r in records if r["error"] is None)
    assert audio_s > 3600
    assert math.isclose(summary["audio_hours"], audio_s / 3600, rel_tol=1e-3), (summary, audio_s)
    assert 0 < summary["wall_s"] <= mixed_run["wall_s"] + 1
    assert "real_time_factor" not in summary
    assert math.isclose(summary["rtfx"], audio_s / summary["wall_s"], rel_tol=0.05), summary  # RTFx: audio / wall


# --- 2. killed part-way, resumed ----------------------------------------------------------------

N_RESUME_CLIPS = 16


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_model, cli_env, data_dir):
    """16 short corpus clips: a run killed after its third record, a torn line appended as a
    kill mid-write leaves one, then `--resume` to the end."""
    root = tmp_path_factory.mktemp("resume")
    corpus = data_dir / "corpus"
    clips = sorted((p for p in corpus.glob("*.flac")), key=lambda p: (p.stat().st_size, p.name))[:N_RESUME_CLIPS]
    assert len(clips) == N_RESUME_CLIPS
    manifest = root / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(p)}) + "\n" for p in clips), encoding="utf-8")
    out = root / "out"
    args = _args(tiny_model, out, "--batch-size", "2", str(manifest))

    with open(root / "first.log", "w") as log:
        proc = subprocess.Popen(args, cwd=root, env=cli_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_preexec())
        running = kill_after_records(proc, out / "results.jsonl", 3, timeout=300)
    first_log = (root / "first.log").read_text(errors="replace")
    assert running, f"the first run ended (rc {proc.returncode}) before it was killed:\n{first_log[-3000:]}"
    before = complete_records(out / "results.jsonl")
    assert len(before) >= 3, f"no 3 records within 300 s:\n{first_log[-3000:]}"
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write('{"path": "x')  # what a kill in the middle of a write leaves
    resume = _run([*args, "--resume"], cli_env, cwd=root)
    return {"out": out, "args": args, "root": root, "clips": clips, "before": before, "resume": resume}


@pytest.mark.slow
def test_kill_then_resume_completes_every_entry_once(resumed_run):
    resume, out = resumed_run["resume"], resumed_run["out"]
    assert resume.returncode == 0, resume.stderr[-3000:]
    records = _records(out / "results.jsonl")  # the torn line must be gone: every line parses
    got = collections.Counter(r.get("path") for r in records)
    want = collections.Counter(str(p) for p in resumed_run["clips"])
    assert got == want, f"missing: {dict(want - got)}, duplicated or extra: {dict(got - want)}"
    before = resumed_run["before"]
    assert records[:len(before)] == before, "records written before the kill changed"


@pytest.mark.slow
def test_kill_then_resume_texts(resumed_run, data_dir):
    references = json.loads((data_dir / "corpus" / "transcripts.json").read_text())
    records = [json.loads(line) for line in (resumed_run["out"] / "results.jsonl").read_text().splitlines()
               if line.startswith("{") and line.endswith("}")]
    by_name = {Path(r["path"]).name: r for r in records}
    assert all(r["error"] is None and r["text"].strip() for r in records), \
        [(r["path"], r["error"], r["text"]) for r in records if r["error"] is not None or not r["text"].strip()]
    for name in ("joe_cat.flac", "joe_keys.flac", "joe_left.flac"):
        r = by_name.get(name)
        assert r is not None, f"no record for {name}"
        hits, n = _hits(r["text"], references[name])
        assert hits >= n - 1, f"{name}: {hits}/{n} reference words in {r['text']!r}"


# --- 3. resume with nothing left to do ----------------------------------------------------------


@pytest.mark.slow
def test_resume_with_nothing_to_do_appends_nothing(resumed_run, cli_env):
    out = resumed_run["out"]
    assert resumed_run["resume"].returncode == 0, resumed_run["resume"].stderr[-3000:]
    before = (out / "results.jsonl").read_bytes()
    again = _run([*resumed_run["args"], "--resume"], cli_env, cwd=resumed_run["root"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "results.jsonl").read_bytes() == before
