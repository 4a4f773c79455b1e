"""Chunked long-form against sequential: WER on the long recordings with scripts, in both
timestamp modes, with and without voice activity.

    .venv/bin/python benchmarks/bench_chunked.py [--results-md]

Recordings: the test suite's 3.5-minute lecture (tests/data/longform) and benchmarks' 10-minute
reading (make_bench_audio.py), each with its script. Settings (tiny.en, CLI defaults otherwise:
beam 5, temperature fallback, non-speech skipped): `--long-form sequential`, `--long-form chunked`,
`--long-form chunked --vad`, each with timestamps and with `--without-timestamps`. One whole
`whisper-nnx transcribe` process per cell; WER after Whisper's English normalizer; the table
gives each chunked WER's distance from the sequential run in the same timestamp mode (target:
within 0.5 points).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from common import REPO, git_info, machine_info, publish, record, run_cli

from whisper_nnx.engine.evaluation import wer

MODES = {"sequential": ["--long-form", "sequential"], "chunked": ["--long-form", "chunked"],
         "chunked --vad": ["--long-form", "chunked", "--vad"]}
TIMESTAMPS = {"timestamps": [], "text only": ["--without-timestamps"]}
SUBSECTION = "chunked against sequential, {commit_label}"
REPORT = ("`{command}`; {versions}; tiny.en, CLI defaults (beam 5, temperature fallback), one whole process per "
          "cell; WER after Whisper's English normalizer, and each chunked run's distance from sequential in the same "
          "timestamp mode (target: at most +0.5 points). Record: `{record}`.")


def recordings() -> list[tuple[str, Path, str]]:
    """[(name, path, script)]: the long recordings that have scripts."""
    from make_bench_audio import long_recording

    lecture = REPO / "tests" / "data" / "longform"
    reading, meta = long_recording(600.0)
    return [("lecture-3.5min", lecture / "lecture.ogg", json.loads((lecture / "lecture.json").read_text())["text"]),
            ("reading-10min", reading, meta["text"])]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results-md", action="store_true")
    args = p.parse_args(argv)
    git, machine = git_info(), machine_info()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows, results = [], {}
    for name, path, script in recordings():
        for stamps, stamp_flags in TIMESTAMPS.items():
            sequential = None
            for mode, mode_flags in MODES.items():
                got = run_cli(path, [*mode_flags, *stamp_flags], env, Path(tempfile.mkdtemp(prefix="whisper-nnx-ch-")))
                got["wer"] = wer(script, got["text"]) if "text" in got else None
                results[f"{name} / {mode} / {stamps}"] = got
                if mode == "sequential":
                    sequential = got["wer"]
                delta = "-" if mode == "sequential" or got["wer"] is None or sequential is None else \
                    f"{100 * (got['wer'] - sequential):+.2f}"
                score = "error" if got["wer"] is None else f"{100 * got['wer']:.2f}"
                row = (f"| {name} | {stamps} | {mode} | {score} | {delta} | {got.get('windows', '-')} | "
                       f"{got['wall_s']:.1f} |")
                print(row, flush=True)
                rows.append(row)
    table = "\n".join(["| recording | timestamps | mode | WER % | vs sequential (points) | windows | wall s |",
                       "|---|---|---|---|---|---|---|", *rows])
    rec = record("chunked", {"model": "tiny.en", "modes": MODES, "timestamps": TIMESTAMPS}, results, git, machine)
    publish(rec, table, SUBSECTION, REPORT, "bench_chunked.py", argv, args.results_md)


if __name__ == "__main__":
    main()
