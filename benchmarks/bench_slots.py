"""Row-step efficiency of the token loop: whole batches (each runs until its slowest row; the
batch narrows as rows end) against continuous batching over slots (a row that ends frees its
slot for a waiting row: a fallback retry), on real decoding with tiny.en.

    .venv/bin/python benchmarks/bench_slots.py [--repeats 2] [--batch-size 16] [--readings 4] [--results-md]

Inputs: benchmarks' 10-minute reading `--readings` times (sequential long-form: each file has one
window out at a time, so batches hold several files' windows side by side), the test corpus
clips and the German sample (an English-only model falls back through every temperature on
it). Greedy with
the reference's temperature fallback. Both modes run in this one process, alternating, on the
same loaded model; `useful` counts each row's real tokens and its end, `row steps` every row of
every step the device ran (padding, finished rows waiting, free slots). The transcripts of the
two modes must be equal (the run fails otherwise).
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

from common import REPO, git_info, machine_info, publish, record

SUBSECTION = "token loop row-step efficiency, whole batches vs slots, {commit_label}"
REPORT = ("`{command}`; {versions}; tiny.en on CPU, greedy with temperature fallback, batch {batch_size}, "
          "the reading {readings} times + 33 clips + the German sample; "
          "both modes in one process, alternating, {repeats} runs each (row-steps are the same every run; "
          "wall time is the median). {load}. Record: `{record}`.")


def inputs(readings: int) -> list[str]:
    """The reading (linked `readings` times under distinct names), the corpus clips, the German sample."""
    from make_bench_audio import long_recording

    data = REPO / "tests" / "data"
    reading, _ = long_recording(600.0)
    folder = Path(tempfile.mkdtemp(prefix="bench-slots-"))
    copies = []
    for k in range(readings):
        (link := folder / f"reading-{k}{reading.suffix}").symlink_to(reading)
        copies.append(str(link))
    return [*copies, *sorted(glob.glob(str(data / "corpus" / "*.flac"))), str(data / "sample_german.flac")]


def run(transcriber, paths: list[str], continuous: bool, batch_size: int) -> dict:
    counters = transcriber.decoder.generator.counters
    transcriber.decoder.continuous = continuous
    before = (counters.row_steps, counters.useful)
    start = time.perf_counter()
    records = transcriber.transcribe(paths, batch_size=batch_size)
    wall = time.perf_counter() - start
    row_steps, useful = counters.row_steps - before[0], counters.useful - before[1]
    return {"wall_s": round(wall, 2), "row_steps": row_steps, "useful": useful,
            "efficiency": round(useful / row_steps, 4) if row_steps else None,
            "texts": [r["text"] for r in records]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--readings", type=int, default=4, help="copies of the 10-minute reading")
    p.add_argument("--results-md", action="store_true")
    args = p.parse_args(argv)
    git, machine = git_info(), machine_info()
    from whisper_nnx.engine.transcribe import Transcriber

    transcriber = Transcriber("tiny.en")
    paths = inputs(args.readings)
    run(transcriber, paths[-3:], False, args.batch_size)  # compile both modes' programs first
    run(transcriber, paths[-3:], True, args.batch_size)
    runs: dict[str, list[dict]] = {"whole batches": [], "slots": []}
    for _ in range(args.repeats):
        for mode, continuous in (("whole batches", False), ("slots", True)):
            runs[mode].append(run(transcriber, paths, continuous, args.batch_size))
            print(mode, {k: v for k, v in runs[mode][-1].items() if k != "texts"}, flush=True)
    reference = runs["whole batches"][0]["texts"]
    if any(r["texts"] != reference for rs in runs.values() for r in rs):
        raise SystemExit("the transcripts differ between the modes")
    rows, results = [], {}
    for mode, rs in runs.items():
        first = rs[0]
        results[mode] = {"row_steps": first["row_steps"], "useful": first["useful"], "efficiency": first["efficiency"],
                         "wall_s": [r["wall_s"] for r in rs], "fastest_wall_s": min(r["wall_s"] for r in rs)}
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        rows.append(f"| {mode} | {first['row_steps']} | {first['useful']} | {first['efficiency']:.3f} | {walls} |")
    whole, slots = results["whole batches"], results["slots"]
    ratio = whole["row_steps"] / slots["row_steps"]
    table = "\n".join(["| mode | row-steps | useful steps | efficiency | wall s, each run |", "|---|---|---|---|---|",
                       *rows, f"\nwhole batches run {ratio:.2f}x the row-steps of slots; fastest runs' wall time, "
                       f"whole / slots: {whole['fastest_wall_s'] / slots['fastest_wall_s']:.2f}; transcripts identical "
                       f"over {len(paths)} files."])
    rec = record("slots", {"batch_size": args.batch_size, "repeats": args.repeats, "model": "tiny.en",
                           "readings": args.readings,
                           "files": len(paths)}, results, git, machine)
    publish(rec, table, SUBSECTION, REPORT, "bench_slots.py", argv, args.results_md)


if __name__ == "__main__":
    main()
