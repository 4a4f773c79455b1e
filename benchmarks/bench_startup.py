"""Start-up benchmark: a fresh process's time to its first transcript, cold and warm compilation cache.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 3] [--results-md]

A one-file CLI run on a CPU host spends most of its time compiling (encoder, prefill, the
decode loop, the log-mel), which JAX's persistent compilation cache (engine/compile_cache.py,
`whisper-nnx transcribe --compile-cache DIR`) stores for the next process. Each repeat starts,
on one short clip (tests/data/sample_joe.flac, 4 s) and tiny.en:

  ours, cold:  the CLI with `--compile-cache` on a new, empty directory (a first run);
  ours, warm:  the same command on the directory the cold run just filled (a second run);
  ours, off:   `--compile-cache off` (no persistent cache at all: should match cold);
  faster-whisper <type>: a `python -c` process that imports faster_whisper, loads the same
      CTranslate2 checkpoint in each of `--peer-compute-types` and transcribes the clip.

Both sides decode the clip with language en and the same beam size (`--beam-size`, default 5,
both engines' default) and print the transcript as soon as it is done, so from the parent we
measure the process's whole wall time (interpreter start to exit) and its time to first result
(when that line arrives; the rest is writing outputs and shutting down), plus its peak RSS
(wait4). JAX_COMPILATION_CACHE_DIR and WHISPER_NNX_COMPILE_CACHE are removed from the children's
environment, so only the flag decides. The cache directory's size after the cold run is
reported. Writes a JSON record (benchmarks/results/startup-<day>-<sha>.json) and, with
`--results-md`, a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (  # the script's own folder is on sys.path
    PEER_PACKAGES,
    REPO,
    git_info,
    machine_info,
    machine_title,
    record,
    report_fields,
    timed_process,
    update_results_md,
    versions,
    write_record,
)

CLIP = REPO / "tests" / "data" / "sample_joe.flac"
CLEARED_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "WHISPER_NNX_COMPILE_CACHE")
# The peer's whole start-up, as a user's script would do it; argv: checkpoint, compute type, clip, beam.
PEER_SCRIPT = """import sys
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="auto", compute_type=sys.argv[2])
segments, _ = model.transcribe(sys.argv[3], language="en", beam_size=int(sys.argv[4]))
print(sys.argv[3] + ": " + "".join(s.text for s in segments).strip(), flush=True)
"""

# RESULTS.md: the subsection title and the paragraph above the table (fields: `_section`).
SUBSECTION = "startup (compile cache), {commit_label}"
REPORT = (
    "{head}; {peer_versions}; {model}, one clip (`{clip_name}`), language en, beam {beam_size}; {load}. Each line "
    "is a fresh process (our CLI, or a `python -c` that loads faster-whisper and transcribes), timed from launch: "
    "`wall s` to exit, `first result s` to its transcript line. Cold: `--compile-cache` on an empty directory; "
    "warm: the same directory again; off: `--compile-cache off`. Medians over the repeats; the cache size is the "
    "directory's after the run. Record: `{record}`.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--clip", type=Path, default=CLIP, help="one short audio file")
    p.add_argument("--repeats", type=int, default=3, help="cold/warm/off triples (a new cache directory each)")
    p.add_argument("--beam-size", type=int, default=5, help="both sides; 1: greedy")
    p.add_argument("--peer-compute-types", default="float32,int8", help="faster-whisper compute types ('' for none)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per process")
    p.add_argument("--out", default=None, help="JSON record path (default: benchmarks/results/startup-...json)")
    p.add_argument("--results-md", action="store_true", help="also write the table into benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


# --- one timed process ------------------------------------------------------------------------------

def dir_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under `path`."""
    files = [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files), len(files)


def ours_cmd(args, cache: str, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", str(args.clip), "--model", args.model,
            "--output-dir", str(out_dir), "--compile-cache", cache, "--language", "en",
            "--beam-size", str(args.beam_size), "--no-progress"]  # not --quiet: the transcript line is the mark


def peer_cmd(args, checkpoint: Path, compute_type: str) -> list[str]:
    return [sys.executable, "-c", PEER_SCRIPT, str(checkpoint), compute_type, str(args.clip), str(args.beam_size)]


# --- the run ----------------------------------------------------------------------------------------

def measure(args) -> dict:
    """{setting: [result per repeat]}, settings interleaved within each repeat."""
    from whisper_nnx.engine.checkpoints.hub import resolve_model

    checkpoint = resolve_model(args.model)
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV} | {"HF_HUB_OFFLINE": "1"}
    peers = [t for t in args.peer_compute_types.split(",") if t.strip()]
    prefix = f"{args.clip.name}: "  # the transcript line: "<path>: <text>" on both sides
    runs: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench_startup-") as tmp:
            cache = Path(tmp) / "jax-cache"
            plan = [("ours, cold cache", ours_cmd(args, str(cache), Path(tmp) / "out-cold")),
                    ("ours, warm cache", ours_cmd(args, str(cache), Path(tmp) / "out-warm")),
                    ("ours, cache off", ours_cmd(args, "off", Path(tmp) / "out-off"))]
            plan += [(f"faster-whisper {t}", peer_cmd(args, checkpoint, t)) for t in peers]
            for name, cmd in plan:
                print(f"[{time.perf_counter() - t0:.0f} s] repeat {repeat + 1}/{args.repeats}: {name}", flush=True)
                res = timed_process(cmd, env, prefix, args.timeout)
                if name.startswith("ours") and name != "ours, cache off":
                    res["cache_bytes"], res["cache_files"] = dir_size(cache) if cache.exists() else (0, 0)
                runs.setdefault(name, []).append(res)
                print("  " + _line(name, [res]), flush=True)
    return runs


def known_text(clip: Path):
    """The clip's text when it is one of tests/data's (for a WER sanity check), else None."""
    index = clip.resolve().parent / "transcripts.json"
    return json.loads(index.read_text()).get(clip.name) if index.exists() else None


def summarize(runs: dict[str, list[dict]], known) -> dict:
    """Per setting: medians over the repeats that worked, and the WER of the first transcript."""
    from whisper_nnx.engine.evaluation import wer

    out = {}
    for name, results in runs.items():
        good = [r for r in results if "error" not in r]
        out[name] = {"runs": len(results), "errors": [r["error"] for r in results if "error" in r],
                     "wall_min_s": min((r["wall_s"] for r in good), default=None),
                     **{key: _median(good, key) for key in ("wall_s", "first_result_s", "peak_rss_bytes",
                                                            "cache_bytes", "cache_files")},
                     "wer": wer(known, good[0]["text"]) if good and known else None}
    return out


def _median(results: list[dict], key: str):
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else None


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _row(name: str, s: dict) -> str:
    cache = "-" if s["cache_bytes"] is None else f"{s['cache_bytes'] / 2**20:.1f} / {s['cache_files']:.0f}"
    return (f"| {name} | {s['runs']} | {_f(s['wall_s'], '.1f')} | {_f(s['wall_min_s'], '.1f')} | "
            f"{_f(s['first_result_s'], '.1f')} | {_f(s['peak_rss_bytes'] and s['peak_rss_bytes'] / 2**20, '.0f')} | "
            f"{cache} | {_f(s['wer'], '.3f')} |")


def _line(name: str, results: list[dict]) -> str:
    s = summarize({name: results}, None)[name]
    return _row(name, s) + (f" error: {s['errors'][0]}" if s["errors"] else "")


def table(summary: dict) -> str:
    lines = ["| process | runs | wall s (median) | wall s (min) | first result s | peak RSS MiB | "
             "cache MiB / files | WER |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_row(name, s) for name, s in summary.items()]
    lines += [f"error: {name}: {e}" for name, s in summary.items() for e in s["errors"]]
    cold, warm = summary.get("ours, cold cache", {}), summary.get("ours, warm cache", {})
    if cold.get("first_result_s") and warm.get("first_result_s"):
        lines += ["", f"Warm cache: first result {warm['first_result_s']:.1f} s instead of "
                      f"{cold['first_result_s']:.1f} s ({cold['first_result_s'] - warm['first_result_s']:.1f} s "
                      f"of compiling saved; warm/cold {warm['first_result_s'] / cold['first_result_s']:.2f})."]
        peer = summary.get("faster-whisper float32", {})
        if peer.get("first_result_s"):
            lines.append(f"Ours warm / faster-whisper float32, time to first result: "
                         f"**{warm['first_result_s'] / peer['first_result_s']:.2f}**.")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    git, machine, t0 = git_info(), machine_info(), time.perf_counter()
    runs = measure(args)
    summary = summarize(runs, known_text(args.clip))
    settings = {"model": args.model, "clip": str(args.clip), "repeats": args.repeats, "beam_size": args.beam_size,
                "peer_compute_types": args.peer_compute_types, "python": sys.executable,
                "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])}
    rec = record("startup", settings, {"summary": summary, "runs": runs, "total_s": time.perf_counter() - t0},
                 git=git, machine=machine)
    rec["versions"] = versions(PEER_PACKAGES)
    path = write_record(rec, args.out)
    print("\n" + table(summary) + f"\n\nrecord: {path}")
    if args.results_md:
        update_results_md(*_section(rec, path))
    return 0 if not any(s["errors"] for s in summary.values()) else 1


def _section(rec: dict, path: Path) -> tuple[str, str, str]:
    """RESULTS.md's (date and machine, `startup (compile cache), commit ...`, body)."""
    fields = {**report_fields(rec, path), "clip_name": Path(rec["settings"]["clip"]).name}
    body = REPORT.format(**fields) + "\n\n" + table(rec["results"]["summary"])
    return machine_title(rec), SUBSECTION.format(**fields), body


if __name__ == "__main__":
    sys.exit(main())
