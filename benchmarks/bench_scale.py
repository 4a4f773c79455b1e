"""Scale benchmark: a million-entry corpus listed, dry-run, planned for resume and ended (the end
check, results.parquet, eval's scores, the merge of process files) (issue 25: memory and work
flat in corpus size; targets: each step under 1 GiB peak RSS and 60 s).

    .venv/bin/python benchmarks/bench_scale.py [--entries 1000000] [--results-md]

It writes, under a scratch folder (`--work`, default a new temp folder, removed afterwards):
`audio/` with `--real-files` one-second WAV clips (hard links to one clip, distinct names), a
`.txt` manifest of `--entries` lines naming `audio/NNNNNNN.wav` (the first `--real-files` exist;
the rest do not: missing files are entries like any other for listing, and their records would
be input errors), the same entries as a `.jsonl` manifest with reference texts (eval's), and
`out/results.jsonl` holding one realistic record per entry (a sentence of
text, one segment, the run's facts, its files; every `--run-error-every`-th a run error).

Each step runs as its own process (the parent reads its peak RSS with wait4, its wall time from
start to exit, interpreter start-up included; the step prints its CPU time, user + system, which
the machine's load moves less than the wall time):

  dry run, new folder:  `whisper-nnx transcribe MANIFEST --dry-run` (cli.main) into a folder not there
  dry run, resume:      the same with `--resume` on out/ (the million records read, the plan counted)
  dry run, Parquet dataset, new folder / resume: the same for `dataset.parquet`, a Parquet
                        dataset of `--entries` rows (id, text, and the Audio feature's struct
                        naming the clip by a path relative to the dataset: no audio bytes
                        stored), in row groups of 10,000 rows as `datasets` writes them;
                        resume on out_parquet/, one record per row named `FILE:ROW`
  resume plan:          what `BulkRun` does before the model loads: the entries listed
                        (`expand_inputs`), `results.plan_run` over them and the records read one
                        line at a time (`results.iter_records`)
  resume plan, list:    the same with every record held in a list (`results.all_records`, as the
                        run's end check still reads them), for comparison
  prepare:              the start of a resumed run on a copy of out/: `repair` then `drop_retried`
  end check:            the run's end (`BulkRun._end`): each entry's record checked, failures
                        counted, the records read one line at a time
  end check, list:      the same holding every record in a list (what --formats parquet and
                        eval did before they streamed), for comparison
  end, parquet:         the end check, then results.parquet written as `--formats parquet`
                        writes it (`results_table.write_parquet`: records read one line at a
                        time, row groups of a bounded number of records)
  end, parquet, before: the table built whole from every record held in a list and written with
                        one `pq.write_table` (the code before it streamed), for comparison
  end, eval:            the end check, then `whisper-nnx eval`'s scores, eval.json and eval.md
                        (`evaluation.score` over records read one line at a time) for the
                        entries of a JSONL manifest giving every `--reference-every`-th entry
                        a reference text (jiwer costs ~0.6 ms a scored input: a reference on
                        each would take 10 minutes here; the other entries' records are read
                        and looked up all the same)
  end, eval, list:      the same with every record held in a list first (as before), for comparison
  merge:                `results.merge_process_results` of a copy of the records split into two
                        process files (a multi-process run's end)
  merge, before:        the same as the code before it streamed did it (each file read whole,
                        the merged text written at once), for comparison

Writes a JSON record (benchmarks/results/scale-<day>-<sha>.json) and, with `--results-md`, a
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Optional

from common import REPO, git_info, machine_info, publish, record, timed_process

GIB = 2**30
TARGET_RSS, TARGET_S = 1 * GIB, 60.0
TEXT = ("And so my fellow Americans, ask not what your country can do for you, ask what you can do "
        "for your country. ")

# Each step's code ends with the line its parent waits for: "RESULT <CPU seconds> <what it found>"
# (CPU time, user + system, does not grow with the machine's load the way wall time does).
DONE = """
import resource
_u = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT", round(_u.ru_utime + _u.ru_stime, 2), found, flush=True)
"""
DRY = """import contextlib, io, sys
from whisper_nnx.engine.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    main(sys.argv[1:])
found = buf.getvalue().splitlines()[-1]
""" + DONE
PLAN = """import sys, time
from whisper_nnx.engine import results
from whisper_nnx.engine.inputs import expand_inputs
from pathlib import Path
manifest, out, how = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
entries = list(expand_inputs([manifest]))
if how == "plan":  # the records a resume keeps (drop_retried removed the run errors before)
    plan = results.plan_run(entries, (r for r in results.iter_records(out) if not results.is_retried(r, False)))
    found = f"entries {len(entries)}, skipped {plan.skipped}, todo {len(plan.todo)}"
elif how == "plan-list":
    plan = results.plan_run(entries, [r for r in results.all_records(out) if not results.is_retried(r, False)])
    found = f"entries {len(entries)}, skipped {plan.skipped}, todo {len(plan.todo)}"
elif how == "end":  # BulkRun._end without --formats parquet or eval: records read one at a time
    from whisper_nnx.engine.run import _check_records
    failed, missing = _check_records(entries, out, None)
    found = f"entries {len(entries)}, failed {failed}, missing {len(missing)}"
else:  # every record held in a list, as --formats parquet and eval did before they streamed
    from whisper_nnx.engine.run import _check_records
    failed, missing = _check_records(entries, out, results.all_records(out))
    found = f"entries {len(entries)}, failed {failed}, missing {len(missing)}"
""" + DONE
# The run's end with --formats parquet or eval (BulkRun._end): the end check, then the table or
# the scores; "-before" / "-list": every record held in a list first, as before they streamed
END = """import sys
from whisper_nnx.engine import results
from whisper_nnx.engine.inputs import expand_inputs
from whisper_nnx.engine.run import _check_records
from pathlib import Path
manifest, out, how, target = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
entries = list(expand_inputs([manifest]))
failed, missing = _check_records(entries, out, None)
target.mkdir(parents=True, exist_ok=True)
if how.startswith("parquet"):
    import pyarrow.parquet as pq
    from whisper_nnx.engine import results_table
    if how == "parquet":
        path = results_table.write_parquet(target, results.RecordsOf(out))
    else:
        path = target / results_table.PARQUET
        pq.write_table(results_table.to_table(results.all_records(out)), path)
    meta = pq.ParquetFile(path).metadata
    found = f"rows {meta.num_rows}, row groups {meta.num_row_groups}, failed {failed}, missing {len(missing)}"
else:
    from whisper_nnx.engine import evaluation
    written = results.RecordsOf(out) if how == "eval" else results.all_records(out)
    result = evaluation.report(evaluation.score(entries, written), {"wall_s": 1.0}, {})
    evaluation.write(target, result)
    found = (f"inputs {result['inputs']}, without reference {result['inputs_without_reference']}, "
             f"WER {result['wer']:.2f}, failed {len(result['failed'])}, missing {len(missing)}")
""" + DONE
MERGE = """import sys
from whisper_nnx.engine import results
from pathlib import Path
out, how = Path(sys.argv[1]), sys.argv[2]
files = results.process_files(out)
if how == "merge":
    results.merge_process_results(out)
else:  # the code before it streamed: each file read whole, the merged text written at once
    from whisper_nnx.engine.files import atomic_write_text
    merged = out / results.RESULTS
    old = merged.read_text(encoding="utf-8") if merged.exists() else ""
    atomic_write_text(merged, old + "".join(p.read_text(encoding="utf-8") for p in files))
    for p in files:
        p.unlink()
found = f"{len(files)} process files, results.jsonl {(out / results.RESULTS).stat().st_size >> 20} MiB"
""" + DONE
PREPARE = """import sys
from whisper_nnx.engine import results
from pathlib import Path
out = Path(sys.argv[1])
cut = results.repair(out / results.RESULTS)
dropped = results.drop_retried(out, False)
found = f"cut {cut} bytes, dropped {dropped} records"
""" + DONE


def write_clip(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))


def make_corpus(work: Path, entries: int, real: int, error_every: int, reference_every: int) -> tuple[Path, Path]:
    """The manifest and the output folder with one record per entry (and manifest.jsonl: the
    same entries, every `reference_every`-th with a reference text)."""
    audio = work / "audio"
    audio.mkdir(parents=True)
    write_clip(work / "clip.wav")
    for i in range(real):
        os.link(work / "clip.wav", audio / f"{i:07d}.wav")
    manifest = work / "manifest.txt"
    out = work / "out"
    out.mkdir()
    with open(manifest, "w") as m, open(out / "results.jsonl", "w") as r, open(work / "manifest.jsonl", "w") as j:
        for i in range(entries):
            name = str(audio / f"{i:07d}.wav")
            m.write(name + "\n")
            said = {"text": TEXT.strip()} if reference_every and i % reference_every == 0 else {}
            j.write(json.dumps({"path": name, **said}) + "\n")
            r.write(json.dumps(_record(name, i, error_every), ensure_ascii=False) + "\n")
    write_dataset(work, entries, error_every)
    return manifest, out


DATASET_GROUP_ROWS = 10_000  # rows per row group (`datasets`' default batch size for to_parquet is 1,000-10,000)


def write_dataset(work: Path, entries: int, error_every: int) -> None:
    """work/dataset.parquet: `entries` rows (id, text, audio {bytes: null, path: audio/NNNNNNN.wav}),
    and work/out_parquet/results.jsonl with one record per row, named as the run names them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("audio", audio_type)])
    dataset = work / "dataset.parquet"
    (work / "out_parquet").mkdir()
    with pq.ParquetWriter(str(dataset), schema) as writer, \
            open(work / "out_parquet" / "results.jsonl", "w") as r:
        for first in range(0, entries, DATASET_GROUP_ROWS):
            rows = range(first, min(entries, first + DATASET_GROUP_ROWS))
            audio = [{"bytes": None, "path": f"audio/{i:07d}.wav"} for i in rows]
            writer.write_table(pa.table({"id": [f"utt-{i:07d}" for i in rows], "text": [TEXT.strip()] * len(rows),
                                         "audio": pa.array(audio, audio_type)}, schema=schema))
            for i in rows:
                r.write(json.dumps(_record(f"{dataset}:{i}", i, error_every), ensure_ascii=False) + "\n")


def _record(name: str, i: int, error_every: int) -> dict:
    facts = {"model": "tiny.en", "dtype": "float32", "quantize": None, "long_form": "sequential", "mesh": None,
             "sharding": None}
    if error_every and i % error_every == error_every - 1:
        return {"path": name, "text": "", "language": None, "duration_s": None, "segments": [], "windows": 0,
                "error": f"{name}: RESOURCE_EXHAUSTED: out of memory", "error_kind": "run", **facts}
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": 5.2, "text": TEXT.strip(), "avg_logprob": -0.21,
               "compression_ratio": 1.31, "no_speech_prob": 0.01, "temperature": 0.0}
    return {"path": name, "text": TEXT.strip(), "language": "en", "duration_s": 5.2, "segments": [segment],
            "windows": 1, "error": None, "error_kind": None, **facts,
            "files": {"json": name[:-4] + ".json", "txt": name[:-4] + ".txt"}}


def steps(manifest: Path, out: Path, work: Path) -> list[tuple[str, list[str], str, bool]]:
    """(step, command, the line's prefix it prints when done, has a target)."""
    py = sys.executable
    cli = [py, "-c", DRY, "transcribe", str(manifest), "--no-progress", "--dry-run"]
    cli_dataset = [py, "-c", DRY, "transcribe", str(work / "dataset.parquet"), "--no-progress", "--dry-run"]
    return [("dry run, new folder", [*cli, "--output-dir", str(work / "none")], "RESULT", True),
            ("dry run, resume", [*cli, "--output-dir", str(out), "--resume"], "RESULT", True),
            ("dry run, Parquet dataset, new folder", [*cli_dataset, "--output-dir", str(work / "none")], "RESULT",
             True),
            ("dry run, Parquet dataset, resume", [*cli_dataset, "--output-dir", str(work / "out_parquet"), "--resume"],
             "RESULT", True),
            ("resume plan", [py, "-c", PLAN, str(manifest), str(out), "plan"], "RESULT", True),
            ("resume plan, list", [py, "-c", PLAN, str(manifest), str(out), "plan-list"], "RESULT", False),
            ("prepare (repair, drop_retried)", [py, "-c", PREPARE, str(work / "copy")], "RESULT", False),
            ("end check", [py, "-c", PLAN, str(manifest), str(out), "end"], "RESULT", True),
            ("end check, list", [py, "-c", PLAN, str(manifest), str(out), "end-list"], "RESULT", False),
            ("end, parquet", [py, "-c", END, str(manifest), str(out), "parquet", str(work / "pq")], "RESULT", True),
            ("end, parquet, before", [py, "-c", END, str(manifest), str(out), "parquet-before", str(work / "pq0")],
             "RESULT", False),
            ("end, eval", [py, "-c", END, str(work / "manifest.jsonl"), str(out), "eval", str(work / "ev")],
             "RESULT", True),
            ("end, eval, list", [py, "-c", END, str(work / "manifest.jsonl"), str(out), "eval-list",
                                 str(work / "ev0")], "RESULT", False),
            ("merge (2 process files)", [py, "-c", MERGE, str(work / "merge"), "merge"], "RESULT", True),
            ("merge, before", [py, "-c", MERGE, str(work / "merge0"), "merge-before"], "RESULT", False)]


def prepare_work(work: Path, args: argparse.Namespace, chosen: Optional[set]) -> tuple[Path, Path]:
    """The corpus in `work` (manifest, out/, the copies the steps change): made unless `work`
    holds one made with the same settings (`corpus.json`), which is reused as it is, except the
    folders the `chosen` steps (None: all) change (copy/, merge/, merge0/), made again from out/."""
    settings = {"entries": args.entries, "real_files": args.real_files, "run_error_every": args.run_error_every,
                "reference_every": args.reference_every, "dataset": DATASET_GROUP_ROWS}
    made = work / "corpus.json"
    if made.exists() and json.loads(made.read_text()) == settings:
        manifest, out = work / "manifest.txt", work / "out"
        print(f"reusing the corpus in {work}", flush=True)
    else:
        for name in ("audio", "out", "out_parquet", "dataset.parquet", "clip.wav", "manifest.txt", "manifest.jsonl",
                     "corpus.json"):
            target = work / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        manifest, out = make_corpus(work, args.entries, args.real_files, args.run_error_every,
                                    args.reference_every)
        made.write_text(json.dumps(settings))
    wanted = {"copy": "prepare (repair, drop_retried)", "merge": "merge (2 process files)", "merge0": "merge, before"}
    for folder, step in wanted.items():
        shutil.rmtree(work / folder, ignore_errors=True)
        if chosen is not None and step not in chosen:
            continue
        if folder == "copy":
            shutil.copytree(out, work / folder)
        else:
            split_for_merge(out, work / folder)
    return manifest, out


def split_for_merge(out: Path, folder: Path) -> None:
    """`folder` holding out/results.jsonl split in two process files (halves by lines)."""
    folder.mkdir()
    with open(out / "results.jsonl", "rb") as source:
        lines = sum(1 for _ in source)
        source.seek(0)
        with open(folder / "results.process-00000.jsonl", "wb") as first:
            for _ in range(lines // 2):
                first.write(source.readline())
        with open(folder / "results.process-00001.jsonl", "wb") as second:
            shutil.copyfileobj(source, second)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--real-files", type=int, default=200, help="entries whose file exists (hard links)")
    p.add_argument("--run-error-every", type=int, default=100, help="every N-th record is a run error (0: none)")
    p.add_argument("--reference-every", type=int, default=20,
                   help="every N-th entry of eval's manifest has a reference text (0: none)")
    p.add_argument("--steps", default=None,
                   help="step names to run, separated by ';' (names hold commas; default: all)")
    p.add_argument("--work", default=None,
                   help="scratch folder, kept: its corpus is reused by later runs with the same settings "
                        "(default: a new temp folder, removed after)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per step")
    p.add_argument("--results-md", action="store_true", help="also write the table into benchmarks/RESULTS.md")
    return p.parse_args(argv)


def table(rows: list[dict]) -> str:
    lines = ["| step | wall s | CPU s | peak RSS MiB | target (< 1 GiB, < 60 s) | found |",
             "|---|---:|---:|---:|---|---|"]
    for r in rows:
        verdict = "-" if not r["target"] else "failed" if r.get("error") else (
            "met" if r["peak_rss_bytes"] < TARGET_RSS and r["wall_s"] < TARGET_S else "missed")
        lines.append(f"| {r['step']} | {r['wall_s']:.1f} | {r.get('cpu_s', '?')} | "
                     f"{r['peak_rss_bytes'] / 2**20:,.0f} | {verdict} | {r.get('error') or r['found']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    git, machine = git_info(), machine_info()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        start = time.perf_counter()
        chosen = None if args.steps is None else {name.strip() for name in args.steps.split(";")}
        manifest, out = prepare_work(work, args, chosen)
        setup_s = time.perf_counter() - start
        size = (out / "results.jsonl").stat().st_size
        print(f"corpus written in {setup_s:.1f} s: results.jsonl {size / 2**20:,.0f} MiB", flush=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        rows = []
        for step, cmd, prefix, target in steps(manifest, out, work):
            if chosen is not None and step not in chosen:
                continue
            result = timed_process(cmd, env, prefix, args.timeout)
            cpu, _, found = (result["text"] or "? ").partition(" ")
            rows.append({"step": step, "target": target, **result, "cpu_s": cpu, "found": found})
            print(f"{step}: {result['wall_s']:.1f} s, {result['peak_rss_bytes'] / 2**20:,.0f} MiB", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    settings = {"entries": args.entries, "real_files": args.real_files, "run_error_every": args.run_error_every,
                "reference_every": args.reference_every, "steps": args.steps,
                "results_jsonl_bytes": size, "targets": {"peak_rss_bytes": TARGET_RSS, "wall_s": TARGET_S}}
    rec = record("scale", settings, rows, git=git, machine=machine)
    report = ("{head}; {versions}; {load}. A manifest of {entries:,} entries and a results.jsonl of one "
              "record per entry ({mib:,.0f} MiB, every {run_error_every}-th a run error); each step a "
              "process of its own (wall time from start to exit, peak RSS by wait4). Record: `{record}`.")
    publish(rec, table(rows), "Scale: a million entries (bench_scale.py)",
            report.replace("{mib:,.0f}", f"{size / 2**20:,.0f}"), "bench_scale.py", argv, args.results_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
