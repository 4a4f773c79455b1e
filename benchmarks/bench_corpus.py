"""Corpus benchmark: whisper-nnx against faster-whisper, each a whole process, on synthesized speech.

    .venv/bin/python benchmarks/bench_corpus.py [--rows corpus,long,long-ts,beam] [--repeats 3] [--results-md]

The corpus (make_bench_audio.py, synthesized once and cached): 64 short clips (2-13 s, 1-3
sentences each, piper's joe at three rates and six espeak-ng voices in turn) plus two long
readings, about 10 minutes by joe and 5 minutes by espeak-ng's British voice; every text is known.
Rows (the plan, `ROWS` below):

  corpus: every file, greedy;  long: the 10-minute reading alone, greedy;  beam: the clips, beam 5;
  long-ts: the long row with our segment timestamps (informational: what timestamps cost);
  corpus-slots, long-slots: the corpus and long rows with --continuous-batching (informational).

faster-whisper's batched pipeline decodes text only (`without_timestamps=True` is its default), so
ours runs with `--without-timestamps` in the corpus, long and beam rows: the same job on both sides.

Each side runs as its own process, timed from launch to exit (start-up, model load, compiles or
compilation-cache reads, audio decoding, transcription, writing outputs), on the same `--threads`
CPUs: ours is the CLI (`whisper-nnx transcribe` with the row's flags, its persistent compilation
cache in a folder of this run); theirs a `python -c` that loads the same CTranslate2 checkpoint in
faster-whisper (`compute_type` int8, `cpu_threads` = ours) and runs `BatchedInferencePipeline`
with Silero VAD on each file, batch 8, the row's beam size. One untimed warm-up run of each side
(it fills our compilation cache and the page cache), then `--repeats` rounds, ours and theirs
alternating which goes first. WER: every file's text against its known text after Whisper's
English normalizer, all files joined. Writes a JSON record and, with `--results-md`, a section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (  # the script's own folder is on sys.path
    PEER_PACKAGES,
    VERDICT,
    git_info,
    machine_info,
    machine_title,
    notes,
    record,
    report_fields,
    timed_process,
    update_results_md,
    versions,
    write_record,
)

# The peer's batched pipeline decodes text only (its `without_timestamps=True` default); ours is
# given the same job, except in `long-ts`, which prices our segment timestamps (no target).
TEXT_ONLY = ["--without-timestamps"]
GREEDY_CHUNKED_VAD = ["--long-form", "chunked", "--vad", "--beam-size", "0", "--batch-size", "16"]
# row: (inputs, our CLI flags, their beam size, the target: ours / theirs wall time at most, or None)
ROWS = {
    # targets (issue 28): the corpus and beam rows at faster-whisper's speed, the 10-minute row at 0.8x it
    "corpus": ("clips+long", [*GREEDY_CHUNKED_VAD, *TEXT_ONLY], 1, 1.0),
    "long": ("long10", [*GREEDY_CHUNKED_VAD, *TEXT_ONLY], 1, 1 / 0.8),
    "long-ts": ("long10", GREEDY_CHUNKED_VAD, 1, None),
    "beam": ("clips", ["--beam-size", "5", "--batch-size", "8", *TEXT_ONLY], 5, 1.0),
    # informational: the corpus and long rows with decoder slots shared by the batches in flight
    "corpus-slots": ("clips+long", [*GREEDY_CHUNKED_VAD, *TEXT_ONLY, "--continuous-batching"], 1, None),
    "long-slots": ("long10", [*GREEDY_CHUNKED_VAD, *TEXT_ONLY, "--continuous-batching"], 1, None),
}
OURS_COMMON = ["--language", "en", "--formats", "txt", "--no-progress"]  # transcripts printed: first result
PEER_BATCH, PEER_COMPUTE_TYPE = 8, "int8"
# The peer's whole process, as a user's script would write it; argv: checkpoint, threads, beam, output, files.
PEER_SCRIPT = """import json, sys
from faster_whisper import BatchedInferencePipeline, WhisperModel
checkpoint, threads, beam, out, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
model = WhisperModel(checkpoint, device="cpu", compute_type="%s", cpu_threads=threads)
pipeline, texts = BatchedInferencePipeline(model), {}
for path in files:
    segments, _ = pipeline.transcribe(path, language="en", batch_size=%d, beam_size=beam, vad_filter=True)
    texts[path] = "".join(s.text for s in segments).strip()
    print(path + ": " + texts[path], flush=True)
json.dump(texts, open(out, "w"))
""" % (PEER_COMPUTE_TYPE, PEER_BATCH)

# RESULTS.md: the subsection title, the paragraph above the table and the verdicts (fields: `_section`).
SUBSECTION = "corpus (whole process, against faster-whisper), {commit_label}"
REPORT = (
    "{head}; {peer_versions}; {model}, ours `{our_dtype}` on the CLI, theirs faster-whisper {peer_compute_type} "
    "`BatchedInferencePipeline` (Silero VAD, batch {peer_batch}); {threads} threads each; {load}. Corpus "
    "(make_bench_audio.py): {n_clips} clips ({clips_s:.0f} s) and two readings ({long_s:.0f} s), {audio_s:.0f} s in "
    "all. Each run is a whole process from launch to exit; one warm-up run of each side, then {repeats} rounds "
    "alternating which side goes first; medians. `ours ÷ theirs` < 1: we are faster; the target is the most it "
    "may be. WER after Whisper's English normalizer, all files joined. Record: `{record}`.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated from {','.join(ROWS)}")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="ours; auto: the CLI's default, what `whisper-nnx calibrate` measured on this machine "
                        "(float32 where it was not run); the record names what it resolved to")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPUs for each side")
    p.add_argument("--clips", type=int, default=64, help="short clips in the corpus")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    p.add_argument("--note", action="append", default=[], help="a sentence for RESULTS.md (repeatable)")
    p.add_argument("--out", default=None, help="JSON record path (default: benchmarks/results/corpus-...json)")
    p.add_argument("--results-md", action="store_true", help="also write the table into benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.repeats < 1 or not set(args.rows.split(",")) <= set(ROWS):
        p.error(f"--repeats must be >= 1 and --rows a subset of {','.join(ROWS)}")
    return args


# --- the corpus ---------------------------------------------------------------------------------

def corpus(n_clips: int) -> dict:
    """{"clips", "long10", "long5": [(path, known text)]}, synthesized on first use."""
    from make_bench_audio import SECOND_VOICE, long_recording, short_clips

    paths, texts = short_clips(n_clips)
    ten, ten_meta = long_recording(600.0)
    five, five_meta = long_recording(300.0, voice=SECOND_VOICE)
    return {"clips": [(p, texts[p.name]) for p in paths], "long10": [(ten, ten_meta["text"])],
            "long5": [(five, five_meta["text"])]}


def row_inputs(parts: dict, inputs: str) -> list[tuple[Path, str]]:
    names = {"clips+long": ("clips", "long10", "long5"), "long10": ("long10",), "clips": ("clips",)}[inputs]
    return [item for name in names for item in parts[name]]


def audio_seconds(paths: list[Path]) -> float:
    return sum(map(_duration_s, paths))


@functools.cache
def _duration_s(path: Path) -> float:
    """A file's length in seconds, decoded once per run (rows and the summary share files)."""
    from whisper_nnx.engine.audio import SAMPLE_RATE, load_audio

    return load_audio(path).shape[0] / SAMPLE_RATE


def _resolved_dtype(args) -> str:
    """--dtype as our CLI resolves it on this machine ("auto (bfloat16)" where calibrate chose it)."""
    if args.dtype != "auto":
        return args.dtype
    import jax

    from whisper_nnx.engine.transcribe import resolve_dtype

    return f"auto ({resolve_dtype('auto', jax.devices('cpu')[0], args.model)})"


# --- one side, one run --------------------------------------------------------------------------

def run_ours(args, flags: list[str], files: list[Path], cache: Path, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_corpus-ours-") as out:
        cmd = [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *map(str, files), "--model",
               args.model, "--dtype", args.dtype, "--output-dir", out, "--compile-cache", str(cache),
               *OURS_COMMON, *flags]
        result = timed_process(cmd, env, str(files[0].parent.parent), args.timeout, args.threads)
        records = [json.loads(line) for line in (Path(out) / "results.jsonl").read_text().splitlines()] \
            if (Path(out) / "results.jsonl").exists() else []
    result["texts"] = {r["path"]: r["text"] for r in records if not r.get("error")}
    return result


def run_theirs(args, checkpoint: Path, beam: int, files: list[Path], env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_corpus-theirs-") as out:
        texts_file = Path(out) / "texts.json"
        cmd = [sys.executable, "-c", PEER_SCRIPT, str(checkpoint), str(args.threads), str(beam), str(texts_file),
               *map(str, files)]
        result = timed_process(cmd, env, str(files[0].parent.parent), args.timeout, args.threads)
        result["texts"] = json.loads(texts_file.read_text()) if texts_file.exists() else {}
    return result


def scored(result: dict, items: list[tuple[Path, str]]) -> dict:
    """`result` with its WER (percent) over `items` and without the texts."""
    from whisper_nnx.engine.evaluation import wer

    texts = result.pop("texts")
    result["missing"] = sum(str(p) not in texts for p, _ in items)
    result["wer"] = 100 * wer(" ".join(t for _, t in items), " ".join(texts.get(str(p), "") for p, _ in items))
    result.pop("text", None)
    return result


def measure_row(args, name: str, items: list[tuple[Path, str]], checkpoint: Path, cache: Path, env: dict) -> dict:
    """A row's warm-up and timed rounds, ours and theirs alternating."""
    _, flags, beam, target = ROWS[name]
    files = [p for p, _ in items]
    sides = {"ours": lambda: scored(run_ours(args, flags, files, cache, env), items),
             "theirs": lambda: scored(run_theirs(args, checkpoint, beam, files, env), items)}
    runs: dict[str, list] = {"ours": [], "theirs": []}
    warmup = {side: run() for side, run in sides.items()}
    for i in range(args.repeats):
        for side in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
            runs[side].append(sides[side]())
            print(f"[{name} {i + 1}/{args.repeats}] {side}: {runs[side][-1]['wall_s']:.1f} s, "
                  f"WER {runs[side][-1]['wer']:.2f}%", flush=True)
    out = {"files": len(files), "audio_s": audio_seconds(files), "flags": flags, "beam": beam, "target": target,
           "warmup": warmup, "runs": runs}
    for side in sides:
        walls = [r["wall_s"] for r in runs[side]]
        median = statistics.median(walls)
        out[side] = {"median_s": median, "spread": (max(walls) - min(walls)) / median,
                     "first_result_s": statistics.median(r["first_result_s"] or 0.0 for r in runs[side]),
                     "wer": runs[side][-1]["wer"], "errors": sum("error" in r for r in runs[side]),
                     "peak_rss_gib": max(r["peak_rss_bytes"] for r in runs[side]) / 2**30}
    out["ratio"] = out["ours"]["median_s"] / out["theirs"]["median_s"]
    out["met"] = None if target is None else out["ratio"] <= target and out["ours"]["wer"] <= out["theirs"]["wer"] + 0.5
    return out


# --- the report ---------------------------------------------------------------------------------

def table(rows: dict) -> str:
    lines = ["| row | files | audio s | ours s | theirs s | ours ÷ theirs | target | ours ×RT | theirs ×RT | "
             "ours WER % | theirs WER % | ours first result s | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        o, t = r["ours"], r["theirs"]
        target = "-" if r["target"] is None else f"≤ {r['target']:.2f}"
        lines.append(f"| {name} | {r['files']} | {r['audio_s']:.0f} | {o['median_s']:.1f} | {t['median_s']:.1f} | "
                     f"{r['ratio']:.2f} | {target} | {r['audio_s'] / o['median_s']:.1f} | "
                     f"{r['audio_s'] / t['median_s']:.1f} | {o['wer']:.2f} | {t['wer']:.2f} | "
                     f"{o['first_result_s']:.1f} | {VERDICT[r['met']]} |")
    return "\n".join(lines)


def _section(rec: dict, path: Path) -> tuple[str, str, str]:
    fields = report_fields(rec, path)
    res = rec["results"]
    fields.update(res["corpus"], audio_s=res["corpus"]["clips_s"] + res["corpus"]["long_s"],
                  peer_batch=PEER_BATCH, peer_compute_type=PEER_COMPUTE_TYPE)
    body = "\n\n".join([REPORT.format(**fields), table(res["rows"]), *notes(rec["settings"]["notes"])])
    return machine_title(rec), SUBSECTION.format(**fields), body


def main(argv=None) -> int:
    args = parse_args(argv)
    from whisper_nnx.engine.checkpoints.hub import resolve_model

    t0 = time.perf_counter()
    git, machine = git_info(), machine_info()
    parts = corpus(args.clips)
    checkpoint = resolve_model(args.model)
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "WHISPER_NNX_COMPILE_CACHE")}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_corpus-cache-") as cache:
        for name in args.rows.split(","):
            rows[name] = measure_row(args, name, row_inputs(parts, ROWS[name][0]), checkpoint, Path(cache), env)
    settings = {"command": "benchmarks/bench_corpus.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "model": args.model, "our_dtype": _resolved_dtype(args), "repeats": args.repeats,
                "threads": args.threads,
                "notes": args.note, "plan": {n: ROWS[n] for n in rows}, "peer_script": PEER_SCRIPT}
    summary = {"n_clips": len(parts["clips"]), "clips_s": audio_seconds([p for p, _ in parts["clips"]]),
               "long_s": audio_seconds([p for n in ("long10", "long5") for p, _ in parts[n]])}
    rec = record("corpus", settings, {"rows": rows, "corpus": summary, "total_s": time.perf_counter() - t0},
                 git=git, machine=machine)
    rec["versions"] = versions(PEER_PACKAGES)
    path = write_record(rec, args.out)
    print("\n" + table(rows) + f"\n\nrecord: {path}")
    if args.results_md:
        update_results_md(*_section(rec, path))
    return 0 if all(not r[s]["errors"] for r in rows.values() for s in ("ours", "theirs")) else 1


if __name__ == "__main__":
    sys.exit(main())
