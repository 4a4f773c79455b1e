"""Default-model benchmark: tiny.en against base, the whole CLI over the test corpus, time and WER.

    .venv/bin/python benchmarks/bench_default_model.py [--models tiny.en,base] [--repeats 1] [--results-md]

Which model should `whisper-nnx transcribe` load when none is named? Each run is one whole
`whisper-nnx transcribe` process (interpreter start to exit: model load, compiling, decoding,
writing) over every file of tests/data/corpus (32 short English clips: 20 piper-tts "joe", 12
espeak-ng), at the CLI's defaults (beam 5, --language auto: base detects each file's language,
tiny.en cannot) apart from the model. The models alternate (tiny.en, base, tiny.en, base, ...).

Each model gets its own new JAX compilation cache directory: its first run is cold (what a
user's first run costs: every program compiled) and its second warm (every later run: the
programs loaded from the cache); `--repeats N` runs the cold/warm pair N times, each time on a
new directory. The WER is the corpus WER of the run's records against
tests/data/corpus/transcripts.json, normalized as `whisper-nnx eval` does
(`engine.evaluation.wer`), also split by voice, with the files transcribed in a language other
than English and those with segments unlikely at every fallback temperature. Writes a JSON
record (benchmarks/results/default-model-<day>-<sha>.json) and, with `--results-md`, a section
of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, git_info, machine_info, publish, record  # the script's own folder is on sys.path

CORPUS = REPO / "tests" / "data" / "corpus"
CLEARED_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "WHISPER_NNX_COMPILE_CACHE")

SUBSECTION = "default model (tiny.en or base), {commit_label}"
REPORT = (
    "{head}; {versions}; each row one whole `whisper-nnx transcribe` process over the {files} files of "
    "`tests/data/corpus` ({audio_s:.0f} s of English speech) at the CLI's defaults but the model; the models "
    "alternate; each model's first run on a new compilation cache is cold, its second warm; {load}. WER: corpus "
    "WER against the corpus transcripts, normalized as `eval`. Record: `{record}`.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny.en,base", help="comma-separated model names, alternated")
    p.add_argument("--repeats", type=int, default=1, help="cold/warm pairs per model (a new cache each)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    p.add_argument("--results-md", action="store_true", help="also write the table into benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


# --- one timed process ------------------------------------------------------------------------------

def corpus() -> tuple[list[Path], dict[str, str]]:
    """The corpus files (sorted) and their reference texts by file name."""
    references = json.loads((CORPUS / "transcripts.json").read_text())
    return sorted(CORPUS / name for name in references), references


def transcribe_cmd(model: str, files: list[Path], out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *map(str, files), "--model", model,
            "--output-dir", str(out), "--compile-cache", str(cache), "--quiet", "--no-progress"]


def timed_run(cmd: list[str], env: dict, timeout: int) -> dict:
    """Run `cmd` from the repository root: its wall time to exit, its peak RSS (wait4) and the
    1-minute load average at its start; "error" (its last stderr lines) when it failed."""
    import threading

    with tempfile.TemporaryFile("w+") as err:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
        wall = time.perf_counter() - start
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().strip().splitlines()[-3:]
    out = {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "load_avg_1min_at_start": load}
    if proc.returncode:
        out["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
    return out


def score(results: Path, references: dict[str, str]) -> dict:
    """Corpus WER (percent) of a run's records, overall and per voice; files decoded in another
    language, and files with unlikely segments."""
    from whisper_nnx.engine.evaluation import wer

    records = {Path(r["path"]).name: r for r in map(json.loads, results.read_text().splitlines())}
    names = sorted(references)
    hypothesis = {n: (records.get(n) or {}).get("text") or "" for n in names}

    def rate(prefix: str) -> float:
        chosen = [n for n in names if n.startswith(prefix)]
        return 100 * wer([references[n] for n in chosen], [hypothesis[n] for n in chosen])

    return {"wer": rate(""), "wer_joe": rate("joe_"), "wer_espeak": rate("espeak_"),
            "missing_or_errors": sorted(n for n in names if n not in records or records[n].get("error")),
            "not_english": sorted(n for n in names if (records.get(n) or {}).get("language") not in (None, "en")),
            "with_unlikely_segments": sorted(n for n in names if (records.get(n) or {}).get("unlikely_segments"))}


# --- the run ----------------------------------------------------------------------------------------

def measure(args, files: list[Path], references: dict[str, str]) -> list[dict]:
    """Every run in the order made: the models alternate, cold then warm cache."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV} | {"HF_HUB_OFFLINE": "1"}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    runs, t0 = [], time.perf_counter()
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench_default_model-") as tmp:
            for cache_state in ("cold", "warm"):
                for model in models:
                    out = Path(tmp) / f"out-{model}-{cache_state}"
                    print(f"[{time.perf_counter() - t0:.0f} s] repeat {repeat + 1}/{args.repeats}: {model}, "
                          f"{cache_state} cache", flush=True)
                    run = {"model": model, "cache": cache_state, "repeat": repeat,
                           **timed_run(transcribe_cmd(model, files, out, Path(tmp) / f"cache-{model}"), env,
                                       args.timeout)}
                    if "error" not in run:
                        run.update(score(out / "results.jsonl", references))
                    runs.append(run)
                    print("  " + _row(run), flush=True)
    return runs


def summarize(runs: list[dict]) -> dict:
    """Per model and cache state: median wall time over the repeats that worked, and the WER."""
    out = {}
    for run in runs:
        out.setdefault(f"{run['model']}, {run['cache']}", []).append(run)
    return {key: {"runs": len(group), "errors": [r["error"] for r in group if "error" in r],
                  "wall_s": statistics.median([r["wall_s"] for r in group if "error" not in r] or [float("nan")]),
                  "wer": next((r["wer"] for r in group if "wer" in r), None)} for key, group in out.items()}


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _row(run: dict) -> str:
    if "error" in run:
        return f"| {run['model']} | {run['cache']} | {run['repeat'] + 1} | {run['wall_s']:.1f} | error: {run['error']} |"
    return (f"| {run['model']} | {run['cache']} | {run['repeat'] + 1} | {run['wall_s']:.1f} | "
            f"{run['peak_rss_bytes'] / 2**20:.0f} | {run['load_avg_1min_at_start']:.1f} | {run['wer']:.2f} | {run['wer_joe']:.2f} | "
            f"{run['wer_espeak']:.2f} | {len(run['not_english'])} | {len(run['with_unlikely_segments'])} |")


def table(runs: list[dict], audio_s: float) -> str:
    lines = ["| model | cache | repeat | wall s | peak RSS MiB | load at start | WER % | WER % joe | WER % espeak | "
             "files not en | files with unlikely |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_row(r) for r in runs]
    summary = summarize(runs)
    lines += ["", "| model, cache | runs | wall s (median) | RTFx | WER % |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {key} | {s['runs']} | {s['wall_s']:.1f} | {audio_s / s['wall_s']:.2f} | {_f(s['wer'], '.2f')} |"
              for key, s in summary.items()]
    return "\n".join(lines)


def audio_seconds(files: list[Path]) -> float:
    from whisper_nnx.engine.audio import SAMPLE_RATE, load_audio

    return sum(load_audio(f).shape[0] for f in files) / SAMPLE_RATE


def main(argv=None) -> int:
    args = parse_args(argv)
    git, machine, t0 = git_info(), machine_info(), time.perf_counter()
    files, references = corpus()
    runs = measure(args, files, references)
    audio_s = audio_seconds(files)
    settings = {"models": args.models, "repeats": args.repeats, "files": len(files), "audio_s": audio_s,
                "python": sys.executable,
                "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])}
    rec = record("default-model", settings, {"summary": summarize(runs), "runs": runs,
                                             "total_s": time.perf_counter() - t0}, git=git, machine=machine)
    publish(rec, table(runs, audio_s), SUBSECTION, REPORT, "bench_default_model.py", argv, args.results_md)
    return 0 if not any("error" in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
