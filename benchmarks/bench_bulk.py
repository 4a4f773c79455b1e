"""Bulk-transcription benchmark: memory stays flat over a long run of the CLI.

    .venv/bin/python benchmarks/bench_bulk.py --files 300 [--model tiny.en] [CLI ARGS, e.g. --long-form chunked]

Builds `--files` short files from tests/data/corpus in a temporary folder (one clip or two joined
by silence, random gain and lead-in, as wav 16 kHz / flac 22.05 kHz / ogg-opus 48 kHz / mp3
44.1 kHz) and a `.txt` manifest, then runs, with HF_HUB_OFFLINE=1,

    python -m whisper_nnx.engine.cli transcribe MANIFEST --output-dir OUT --quiet --beam-size 0
        --batch-size 16 --formats json,txt [unknown args of this script, which may override these]

polling the child's VmRSS in /proc and the complete lines of OUT/results.jsonl every ~0.2 s: RSS
as a function of files done. Only the CLI's contract is assumed: one JSON object per input in
results.jsonl, in any order, each with "path" and "error".
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import soxr
from common import (  # the script's own folder is on sys.path
    REPO,
    git_info,
    machine_info,
    machine_title,
    record,
    report_fields,
    update_results_md,
    write_record,
)

CORPUS = REPO / "tests" / "data" / "corpus"
# (extension, encoder, sample rate): the CLI decodes and resamples each to 16 kHz mono.
FORMATS = [("wav", "pcm_s16le", 16_000), ("flac", "flac", 22_050), ("ogg", "libopus", 48_000),
           ("mp3", "libmp3lame", 44_100)]
MiB = 2**20

# RESULTS.md: the subsection title and the paragraph above the table (fields: `_section`).
SUBSECTION = "bulk memory, {commit_label}"
REPORT = (
    "{head}; {versions}; backend {backend} ({devices}); {ram_gib:.0f} GiB RAM, {load}. CLI: `{cli_command}` on "
    "{files} files made from tests/data/corpus (one clip or two joined, random gain, as {formats}). RSS is the CLI "
    "process's VmRSS polled every {interval_s} s against the lines in results.jsonl (floor/median: over the polls "
    "while that tenth of the files was being done); peak is its ru_maxrss. Record: `{record}`.")


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                epilog="Unknown arguments are passed on to `whisper-nnx transcribe`.")
    p.add_argument("--files", type=int, default=300, help="number of input files")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--out", default=None, help="JSON record path (default: benchmarks/results/bulk-<day>-<sha>.json)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between polls")
    p.add_argument("--keep", action="store_true", help="keep the temporary corpus and output folder")
    p.add_argument("--no-results-md", action="store_true", help="do not update benchmarks/RESULTS.md")
    args, extra = p.parse_known_args(argv)
    if args.files < 1:
        p.error("--files must be at least 1")
    return args, extra


# --- corpus -------------------------------------------------------------------------------------

def _read(path: Path) -> np.ndarray:
    to_16k = av.AudioResampler(format="flt", layout="mono", rate=16_000)
    with av.open(str(path)) as c:
        frames = [g.to_ndarray() for f in c.decode(audio=0) for g in to_16k.resample(f)]
    frames += [g.to_ndarray() for g in to_16k.resample(None)]
    return np.concatenate(frames, axis=-1).reshape(-1).astype(np.float32)


def _write(path: Path, audio: np.ndarray, codec: str, rate: int) -> None:
    if rate != 16_000:
        audio = soxr.resample(audio, 16_000, rate).astype(np.float32)
    with av.open(str(path), "w") as c:
        stream = c.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)


def build_corpus(folder: Path, n: int) -> tuple[Path, list[dict]]:
    """`n` files in `folder` plus `folder/manifest.txt`; each differs from the others in bytes."""
    clips = [(p.stem, _read(p)) for p in sorted(CORPUS.glob("*.flac"))]
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        picks = [clips[i % len(clips)]] + ([clips[rng.integers(len(clips))]] if i % 5 == 4 else [])
        parts = [np.zeros(int(rng.uniform(0, 0.5) * 16_000), np.float32)]
        for j, (_, audio) in enumerate(picks):
            parts += [np.zeros(int(rng.uniform(0.3, 1.0) * 16_000), np.float32)] if j else []
            parts.append(audio)
        audio = np.clip(np.concatenate(parts) * rng.uniform(0.5, 1.2), -1, 1).astype(np.float32)
        ext, codec, rate = FORMATS[i % len(FORMATS)]
        path = folder / f"{i:04d}_{'+'.join(name for name, _ in picks)}.{ext}"
        _write(path, audio, codec, rate)
        files.append({"path": str(path), "seconds": audio.shape[0] / 16_000})
    manifest = folder / "manifest.txt"
    manifest.write_text("".join(f["path"] + "\n" for f in files))
    return manifest, files


# --- the run ------------------------------------------------------------------------------------

def _status_bytes(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # gone
        return {}
    return {k: int(v.split()[0]) * 1024 for k, _, v in (ln.partition(":") for ln in lines) if k in ("VmRSS", "VmHWM")}


def run_cli(cmd: list[str], results: Path, log: Path, interval: float) -> tuple[int, float, list[dict], int]:
    """Run `cmd`, polling RSS and records done: (exit code, wall s, samples, child peak RSS bytes)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    samples, done, offset = [], 0, 0
    start = time.perf_counter()
    with open(log, "w") as log_file:
        child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        while child.poll() is None:
            status = _status_bytes(child.pid)
            if results.exists():
                if results.stat().st_size < offset:  # replaced by a shorter file: count again
                    done = offset = 0
                with open(results, "rb") as f:
                    f.seek(offset)
                    new = f.read()
                done += new.count(b"\n")
                offset += new.rfind(b"\n") + 1  # a torn last line is counted when it completes
            if status.get("VmRSS"):
                samples.append({"t": time.perf_counter() - start, "done": done,
                                "rss": status["VmRSS"], "hwm": status["VmHWM"]})
            time.sleep(interval)
    wall = time.perf_counter() - start
    # The largest waited-for child's peak: the CLI (git's children are far smaller).
    return child.returncode, wall, samples, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def check_records(results: Path, files: list[dict]) -> dict:
    counts: collections.Counter = collections.Counter()
    errors, bad = [], 0
    for line in results.read_text(encoding="utf-8").splitlines() if results.exists() else []:
        try:
            rec = json.loads(line)
            counts[os.path.abspath(rec["path"])] += 1
        except (json.JSONDecodeError, KeyError, TypeError):
            bad += 1
            continue
        if rec.get("error") is not None:
            errors.append(f"{rec['path']}: {rec['error']}")
    wanted = {os.path.abspath(f["path"]) for f in files}
    return {"records": sum(counts.values()), "unparsable_lines": bad, "errors": len(errors),
            "error_examples": errors[:5], "missing": len(wanted - set(counts)),
            "duplicated": sum(1 for p, c in counts.items() if c > 1), "unexpected": len(set(counts) - wanted),
            "one_record_each": not bad and set(counts) == wanted and all(c == 1 for c in counts.values())}


def summarize(samples: list[dict], n: int, wall: float, audio_s: float, peak: int) -> dict:
    """Milestones are the first poll at which that many records exist ("end": all of them, before the
    process tears down). RSS swings with each batch's working buffers, so per tenth of the files
    done it also gives the floor (lowest poll) and median: a leak shows as a rising floor."""
    last = next((i for i, s in enumerate(samples) if s["done"] >= n), len(samples) - 1)
    run = samples[:last + 1]  # up to all records written

    def at(fraction: float) -> dict | None:
        return next((s for s in run if s["done"] >= math.ceil(fraction * n)), None)

    s10, s50, end = at(0.1), at(0.5), run[-1] if run else None
    tenths: list[list[int]] = [[] for _ in range(10)]
    for s in run:
        if s["done"]:  # from the first record on
            tenths[min(9, s["done"] * 10 // max(n, 1))].append(s["rss"])
    floors = [min(r) if r else None for r in tenths]
    medians = [float(np.median(r)) if r else None for r in tenths]
    pts = [(d + 0.5, f / MiB) for d, f in enumerate(floors) if d and f is not None]  # the first: compiles
    slope = float(np.polyfit(*zip(*pts), 1)[0] * 1000 / n) if len(pts) > 1 else None
    growth = end["rss"] - s10["rss"] if s10 and end else None
    steady = (end["done"] - s10["done"]) / (end["t"] - s10["t"]) if s10 and end and end["t"] > s10["t"] else None
    step = max(1, len(samples) // 500)
    return {"rss_10pct": s10 and s10["rss"], "done_10pct": s10 and s10["done"], "rss_50pct": s50 and s50["rss"],
            "rss_end": end and end["rss"], "done_end": end and end["done"],
            "peak_rss": max([peak, *(s["hwm"] for s in samples)]), "growth_mib": growth and growth / MiB,
            "growth_pct": growth / s10["rss"] * 100 if growth is not None else None,
            "floor_by_tenth": floors, "median_by_tenth": medians, "floor_slope_mib_per_100_files": slope,
            "wall_s": wall, "files_per_s": n / wall, "audio_s": audio_s, "audio_s_per_s": audio_s / wall,
            "steady_files_per_s": steady, "polls": len(samples),
            "trace_t_done_rss": [[round(s["t"], 2), s["done"], s["rss"]] for s in samples[::step]]}


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(res: dict) -> str:
    def mib(b):
        return _num(b and b / MiB, ".0f")

    c = res["check"]
    rows = [("files / records / errors", f"{res['files']} / {c['records']} / {c['errors']}"),
            ("one record per input", "yes" if c["one_record_each"] else
             f"**no** (missing {c['missing']}, duplicated {c['duplicated']}, unexpected {c['unexpected']}, "
             f"unparsable {c['unparsable_lines']})"),
            ("RSS at 10 % done (MiB)", f"{mib(res['rss_10pct'])} (at {res['done_10pct']} files)"),
            ("RSS at 50 % done (MiB)", mib(res["rss_50pct"])),
            ("RSS at the end (MiB)", f"{mib(res['rss_end'])} ({res['done_end']} files)"),
            ("peak RSS (MiB)", mib(res["peak_rss"])),
            ("growth 10 % -> end", f"**{_num(res['growth_mib'], '+.0f')} MiB ({_num(res['growth_pct'], '+.1f')} %)**"),
            ("RSS floor per tenth of files (MiB)", " ".join(map(mib, res["floor_by_tenth"]))),
            ("RSS median per tenth of files (MiB)", " ".join(map(mib, res["median_by_tenth"]))),
            ("floor slope, tenths 2-10", f"{_num(res['floor_slope_mib_per_100_files'], '+.1f')} MiB / 100 files"),
            ("wall time (s, incl. start-up and compiles)", f"{res['wall_s']:.1f}"),
            ("files / s (whole run; from 10 % on)",
             f"{res['files_per_s']:.2f}; {_num(res['steady_files_per_s'], '.2f')}"),
            ("audio seconds / s", f"{res['audio_s_per_s']:.2f} ({res['audio_s']:.0f} s of audio)")]
    return "\n".join(["| measure | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)])


def cli_command(manifest: str, out: str, model: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", manifest, "--output-dir", out, "--quiet",
            "--model", model, "--beam-size", "0", "--batch-size", "16", "--formats", "json,txt", *extra]


def main(argv=None) -> int:
    args, extra = parse_args(argv)
    git, machine = git_info(), machine_info()  # the code measured, the load when measuring starts
    work = Path(tempfile.mkdtemp(prefix="bench_bulk-"))
    try:
        t0 = time.perf_counter()
        (work / "in").mkdir()
        manifest, files = build_corpus(work / "in", args.files)
        audio_s = sum(f["seconds"] for f in files)
        print(f"corpus: {len(files)} files, {audio_s:.0f} s of audio, built in {time.perf_counter() - t0:.1f} s; "
              f"running {' '.join(cli_command('MANIFEST', 'OUT', args.model, extra)[1:])}", flush=True)
        out = work / "out"
        cmd = cli_command(str(manifest), str(out), args.model, extra)
        rc, wall, samples, peak = run_cli(cmd, out / "results.jsonl", work / "cli.log", args.interval)
        log_tail = (work / "cli.log").read_text(errors="replace").splitlines()[-15:]
        res = {"files": len(files), "exit_code": rc, **summarize(samples, len(files), wall, audio_s, peak),
               "check": check_records(out / "results.jsonl", files), "cli_log_tail": log_tail}
    finally:
        if args.keep:
            print(f"corpus, output and CLI log kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if rc == 3:  # the CLI finished; some inputs have error records (res["check"] counts them)
        print(f"CLI finished with error records (exit 3); see {res['check']['error_examples']}", file=sys.stderr)
    elif rc:
        print(f"CLI failed, exit code {rc}:", *log_tail, sep="\n", file=sys.stderr)
    settings = {"model": args.model, "files": args.files, "interval_s": args.interval, "cli_extra": extra,
                "cli_command": " ".join(["python", *cli_command("MANIFEST", "OUT", args.model, extra)[1:]]),
                "formats": [f[0] for f in FORMATS],
                "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])}
    # Only now, with the CLI gone: `record` imports JAX here, which may take accelerator memory.
    rec = record("bulk", settings, res, git=git, machine=machine)
    path = write_record(rec, args.out)
    print("\n" + table(res) + f"\n\nrecord: {path}")
    if not args.no_results_md:
        update_results_md(*_section(rec, path))
    return 0 if rc == 0 and res["check"]["one_record_each"] else 1


def _section(rec: dict, path: Path) -> tuple[str, str, str]:
    """RESULTS.md's (date and machine, `bulk memory, commit ...`, body)."""
    j = rec["jax"]
    fields = {**report_fields(rec, path), "backend": j["backend"], "devices": ", ".join(j["devices"]),
              "formats": "/".join(rec["settings"]["formats"])}
    body = REPORT.format(**fields) + "\n\n" + table(rec["results"])
    return machine_title(rec), SUBSECTION.format(**fields), body


if __name__ == "__main__":
    sys.exit(main())
