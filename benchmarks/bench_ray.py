"""Ray path overhead: the same corpus through the plain CLI and through `--ray` with 1 and 2
actors, whole process (the Ray runs start their local cluster), alternating on every repeat.

    .venv/bin/python benchmarks/bench_ray.py [--repeats 3] [--results-md]

Corpus: the test corpus (tests/data/corpus, 32 synthesized clips) by default, or --inputs.
Every run uses tiny.en, --batch-size 16 and its own fresh output folder; the compilation cache
is one warm folder for all (filled by a first, untimed plain run), so compiling is not what is
compared. Reported per setting: median wall time, audio seconds per wall second, and the ratio
to the plain CLI (above 1: slower). On a 2-core machine two actors share the two cores with
each other and the driver, so the table measures the Ray path's overhead, not a scale-out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from common import (  # the script's own folder is on sys.path
    REPO,
    git_info,
    machine_info,
    machine_title,
    record,
    report_fields,
    timed_process,
    update_results_md,
    write_record,
)

SUBSECTION = "ray path overhead, {commit_label}"
REPORT = ("`{command}`; {versions}, ray {ray}; tiny.en, --batch-size 16, {files} files ({audio_s:.0f} s of audio); "
          "whole process, warm compilation cache, settings alternating on each of {repeats} repeats; load average "
          "{load_avg:.1f} at the start. Record: `{record}`.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="*", default=None, help="default: tests/data/corpus/*.flac")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--actors", default="1,2", help="actor counts of the --ray runs")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--results-md", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    git, machine = git_info(), machine_info()
    inputs = args.inputs or sorted(str(p) for p in (REPO / "tests" / "data" / "corpus").glob("*.flac"))
    cache = tempfile.mkdtemp(prefix="whisper-nnx-bench-ray-cache-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    settings = {"plain": []} | {f"ray, {n} actor{'s' * (int(n) > 1)}": ["--ray", "--ray-actors", n]
                                for n in args.actors.split(",")}

    def run(extra: list[str]) -> dict:
        out = tempfile.mkdtemp(prefix="whisper-nnx-bench-ray-out-")
        cmd = [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *inputs, "--output-dir", out,
               "--batch-size", "16", "--no-progress", *extra]
        result = timed_process(cmd, env, ": ", args.timeout)
        summary = json.loads((Path(out) / "summary.json").read_text()) if (Path(out) / "summary.json").exists() else {}
        result["audio_s"] = summary.get("audio_hours", 0.0) * 3600
        return result

    run([])  # warm the compilation cache
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for repeat in range(args.repeats):
        for name, extra in settings.items():
            runs[name].append(run(extra))
            print(f"repeat {repeat + 1} {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
    audio_s = max(r["audio_s"] for rs in runs.values() for r in rs)
    rows = []
    base = statistics.median(r["wall_s"] for r in runs["plain"])
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        rows.append({"setting": name, "median_wall_s": wall, "walls": [r["wall_s"] for r in rs],
                     "audio_s_per_s": audio_s / wall, "ratio_to_plain": wall / base,
                     "errors": [r.get("error") for r in rs if r.get("error")]})
    rec = record("ray", {"inputs": len(inputs), "repeats": args.repeats, "actors": args.actors,
                         "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])},
                 {"rows": rows, "audio_s": audio_s}, git=git, machine=machine)
    rec["versions"]["ray"] = version("ray")
    path = write_record(rec)
    table = table_of(rows)
    print(table + f"\nrecord: {path.relative_to(REPO)}")
    if args.results_md:
        fields = {**report_fields(rec, path), "ray": rec["versions"]["ray"], "files": len(inputs),
                  "audio_s": audio_s, "repeats": args.repeats}
        update_results_md(machine_title(rec), SUBSECTION.format(**fields), REPORT.format(**fields) + "\n\n" + table)


def table_of(rows: list[dict]) -> str:
    lines = ["| setting | median wall s | audio s / wall s | wall / plain CLI's |", "|---|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['median_wall_s']:.1f} | {r['audio_s_per_s']:.1f} | {r['ratio_to_plain']:.2f} |"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
