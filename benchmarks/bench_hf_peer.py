"""The same-run peer on an accelerator: whisper-nnx against Hugging Face transformers'
`WhisperForConditionalGeneration`, the same weights, the same clips, the same tokens (issue 26).

    python3 benchmarks/bench_hf_peer.py --checkpoint /tmp/accel-work/large-v3 --clips CORPUS \\
        --batch-sizes 64,256 --tokens 64 --rounds 2 --device gpu --out OUT/peer-large-v3.json

Weights: one Hugging Face checkpoint folder (`prepare_accel.py random` writes random large-v3
weights there on the device: config.json, model.safetensors, generation_config.json,
tokenizer.json); transformers loads it as it loads any, whisper-nnx reads the same files.
Clips: the first B `clip-*` files of a bench_feed corpus (utterances of at most 30 s, real
durations, each padded to a 30 s window by both engines), cycled when the corpus has fewer.

Both decode greedily in English without timestamps, with the same suppressed ids (the non-speech
set, the special tokens and the timestamps: the checkpoint's generation_config.json lists them
for transformers) and exactly `--tokens` tokens a row: whisper-nnx with the end token suppressed
too and `sample_len` = tokens, transformers with `min_new_tokens` = `max_new_tokens` = tokens.
transformers runs in bfloat16
(float32 on a CPU) with SDPA attention and a static cache (`cache_implementation="static"`),
eagerly (`--hf-compile`: its forward under torch.compile). One timed call: for whisper-nnx,
`Transcriber.decode_clips` on the 16 kHz arrays (host padding, log-mel on the device, encoder,
decode loop, text); for transformers, `generate` on log-mel features already on the device
(WhisperFeatureExtractor on the device, untimed), then the ids to text with the same
tokenizer.json.

The engines alternate in separate processes (`--rounds`, each round whisper-nnx then
transformers; a process has the accelerator to itself); in each process one untimed call per
batch (compilation, warm-up) then `--repeats` timed calls. Reported per engine and batch over
all rounds' timed calls: median and best seconds, samples/s (MLPerf's count: utterances of at most
30 s), tokens/s, x real time over the clips' real durations, the MLPerf-equivalent x real time
(samples/s x 23.6 s, the mean duration of MLPerf's Whisper samples) and whisper-nnx over
transformers. `--summary DIR` instead prints one table of every record run_accel_gpu.sh wrote
into DIR (files to records, device-only, the peer) and writes DIR/summary.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from common import (
    PLATFORMS,
    die_with_parent,
    git_info,
    jax_info,
    machine_info,
    peak_rss_bytes,
    record,
    versions,
    write_record,
)

MLPERF_SAMPLE_S = 23.6  # mean speech per sample of MLPerf Inference's Whisper benchmark (issue 26)
MLPERF_SAMPLE_TOKENS = 63.5
ENGINES = ("whisper-nnx", "transformers")
TARGET_VS_HF, TARGET_E2E = 2.0, 0.90


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a Hugging Face checkpoint folder both engines load")
    p.add_argument("--clips", type=Path, help="a bench_feed corpus folder (its clip-* files)")
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default="64,256")
    p.add_argument("--tokens", type=int, default=64, help="tokens every row decodes (MLPerf's samples: 63.5)")
    p.add_argument("--rounds", type=int, default=2, help="alternations: whisper-nnx, then transformers")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per batch in each process")
    p.add_argument("--device", choices=("auto", *PLATFORMS), default="auto")
    p.add_argument("--hf-compile", action="store_true", help="transformers' forward under torch.compile")
    p.add_argument("--compile-cache", default=None, help="JAX's persistent compilation cache (whisper-nnx)")
    p.add_argument("--worker-timeout", type=int, default=600, help="seconds one engine's process may take")
    p.add_argument("--out", type=Path, default=None, help="record path (default: benchmarks/results/)")
    p.add_argument("--summary", type=Path, default=None, help="instead: the table of every record in this folder")
    p.add_argument("--worker", choices=ENGINES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- the clips ----------------------------------------------------------------------------------

def clip_paths(corpus: Path, count: int) -> list[Path]:
    """The corpus's first `count` clips (sorted names), cycled when it has fewer."""
    clips = sorted(corpus.glob("clip-*"))
    if not clips:
        raise SystemExit(f"{corpus}: no clip-* files")
    return [clips[i % len(clips)] for i in range(count)]


def load_clips(corpus: Path, count: int):
    """16 kHz float32 arrays of `clip_paths` and their durations in seconds."""
    from whisper_nnx.engine.audio import SAMPLE_RATE, load_audio

    audio = [load_audio(str(p)) for p in clip_paths(corpus, count)]
    return audio, [len(a) / SAMPLE_RATE for a in audio]


def timed(call, repeats: int, sync=lambda: None) -> tuple[float, list[float], object]:
    """(first call's seconds, the timed calls' seconds, the last output)."""
    start = time.perf_counter()
    out = call()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        sync()
        times.append(time.perf_counter() - start)
    return first, times, out


def failure(batch: int, err: BaseException) -> dict:
    return {"batch": batch, "error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"}


# --- the engines (each in a process of its own) ------------------------------------------------------

def run_ours(args, batches: list[int]) -> dict:
    """whisper-nnx: `Transcriber.decode_clips`, `args.tokens` tokens a row."""
    from common import select_device

    select_device(args.device)
    if args.compile_cache:
        from whisper_nnx.engine.compile_cache import enable_compilation_cache

        enable_compilation_cache(args.compile_cache)
    from bench_feed import forced_suppress_tokens

    from whisper_nnx.engine.options import TranscribeOptions
    from whisper_nnx.engine.transcribe import Transcriber

    start = time.perf_counter()
    transcriber = Transcriber(str(args.checkpoint))
    load_s = time.perf_counter() - start
    audio, durations = load_clips(args.clips, max(batches))
    rows = []
    for batch in batches:
        options = TranscribeOptions.from_kwargs(
            language="en", batch_size=batch, temperature=0.0, sample_len=args.tokens, without_timestamps=True,
            suppress_tokens=forced_suppress_tokens(transcriber.tokenizer, transcriber.dims.n_vocab))
        try:
            first, times, out = timed(functools.partial(transcriber.decode_clips, audio[:batch], options),
                                      args.repeats)
        except Exception as err:  # out of device memory at the largest batches: record it, go on
            rows.append(failure(batch, err))
            continue
        errors = [r["error"] for r in out if r.get("error")]
        rows.append({"batch": batch, "first_call_s": first, "times_s": times,
                     "tokens": [len(r["tokens"]) for r in out], "audio_s": sum(durations[:batch]),
                     "sample_tokens": [list(map(int, r["tokens"])) for r in out[:4]], "errors": errors[:3]})
    return {"load_s": load_s, "dtype": transcriber.dtype, "jax": jax_info(), "batches": rows}


def run_hf(args, batches: list[int]) -> dict:
    """transformers: `WhisperForConditionalGeneration.generate`, bfloat16 (float32 on a CPU),
    SDPA, static cache, `args.tokens` new tokens a row."""
    os.environ["JAX_PLATFORMS"] = "cpu"  # nothing here may take the accelerator from torch
    import tokenizers
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    start = time.perf_counter()
    network = WhisperForConditionalGeneration.from_pretrained(args.checkpoint, dtype=dtype,
                                                              attn_implementation="sdpa").to(device).eval()
    if args.hf_compile:
        network.forward = torch.compile(network.forward, mode="reduce-overhead", fullgraph=True)
    load_s = time.perf_counter() - start
    text = tokenizers.Tokenizer.from_file(str(args.checkpoint / "tokenizer.json"))
    audio, durations = load_clips(args.clips, max(batches))
    extractor = WhisperFeatureExtractor(feature_size=network.config.num_mel_bins)
    features = extractor(audio, sampling_rate=16000, return_tensors="pt", device=device).input_features
    features = features.to(device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for batch in batches:
        def call(batch=batch):
            with torch.inference_mode():
                ids = network.generate(features[:batch], language="en", task="transcribe", return_timestamps=False,
                                       max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                       num_beams=1, cache_implementation="static")
            ids = ids.tolist()
            return ids, text.decode_batch(ids, skip_special_tokens=True)
        try:
            first, times, (ids, _) = timed(call, args.repeats, sync)
        except Exception as err:  # out of device memory at the largest batches: record it, go on
            rows.append(failure(batch, err))
            if device == "cuda":
                torch.cuda.empty_cache()
            continue
        new = [new_tokens(row, network.generation_config) for row in ids]
        rows.append({"batch": batch, "first_call_s": first, "times_s": times, "tokens": [len(r) for r in new],
                     "audio_s": sum(durations[:batch]), "sample_tokens": new[:4], "errors": []})
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"load_s": load_s, "dtype": str(dtype).removeprefix("torch."), "device_peak_bytes": peak, "batches": rows}


def new_tokens(row: list[int], config) -> list[int]:
    """A transformers output row less its decoder prompt (start, English, transcribe,
    no-timestamps: recent versions return the new tokens alone) and any end or padding token
    after them (none when `min_new_tokens` held the end token back)."""
    prompt = [config.decoder_start_token_id, *([config.lang_to_id["<|en|>"]] if config.is_multilingual else []),
              *([config.task_to_id["transcribe"]] if config.is_multilingual else []), config.no_timestamps_token_id]
    rest = row[len(prompt):] if row[:len(prompt)] == prompt else row
    while rest and rest[-1] == config.eos_token_id:
        rest = rest[:-1]
    return rest


def worker(args) -> int:
    """One engine's process: every batch, its result as JSON into --result."""
    run = run_ours if args.worker == "whisper-nnx" else run_hf
    result = {"engine": args.worker, **run(args, args.batch_sizes), "peak_rss_bytes": peak_rss_bytes()}
    args.result.write_text(json.dumps(result) + "\n")
    return 0


# --- the alternation --------------------------------------------------------------------------------

def spawn(engine: str, argv: list[str], timeout: int, env: dict) -> dict:
    """Run `engine`'s worker process (the same arguments, plus --worker) with `env`; its result or
    its error."""
    with tempfile.TemporaryDirectory(prefix="hf-peer-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", engine, "--result", str(result)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=timeout, preexec_fn=die_with_parent, capture_output=True, text=True,
                                  env=env)
        except subprocess.TimeoutExpired:
            return {"engine": engine, "error": f"timed out after {timeout} s", "wall_s": timeout}
        wall = time.perf_counter() - start
        if proc.returncode or not result.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"engine": engine, "error": f"exit {proc.returncode}: " + " | ".join(tail), "wall_s": wall}
        return {**json.loads(result.read_text()), "wall_s": wall}


def summarize(processes: list[dict], batches: list[int]) -> list[dict]:
    """Per engine and batch, over every round: timing, counts and rates; whisper-nnx's rows get
    its ratio to transformers."""
    rows = []
    for engine in ENGINES:
        for batch in batches:
            got = [b for p in processes if p.get("engine") == engine
                   for b in p.get("batches", []) if b["batch"] == batch]
            ok = [b for b in got if "error" not in b]
            if not ok:
                errors = [b["error"] for b in got] + [p["error"] for p in processes
                                                      if p.get("engine") == engine and "error" in p]
                rows.append({"engine": engine, "batch": batch, "error": (errors or ["no result"])[0]})
                continue
            times = [t for b in ok for t in b["times_s"]]
            median, tokens = statistics.median(times), sum(ok[0]["tokens"])
            rows.append({"engine": engine, "batch": batch, "rounds": len(ok),
                         "first_call_s": [round(b["first_call_s"], 2) for b in ok], "median_s": median,
                         "min_s": min(times), "times_s": times, "tokens": tokens,
                         "tokens_per_row": sorted(set(ok[0]["tokens"])), "audio_s": ok[0]["audio_s"],
                         "samples_per_s": batch / median, "tokens_per_s": tokens / median,
                         "x_realtime": ok[0]["audio_s"] / median,
                         "mlperf_equivalent_x": batch / median * MLPERF_SAMPLE_S})
    for row in rows:
        peer = next((r for r in rows if r["engine"] == "transformers" and r["batch"] == row["batch"]), None)
        if row["engine"] == "whisper-nnx" and "error" not in row and peer and "error" not in peer:
            row["vs_transformers"] = row["samples_per_s"] / peer["samples_per_s"]
    return rows


def agreement(processes: list[dict], batch: int) -> Optional[float]:
    """Of the first rows of `batch` that both engines' first processes kept, the fraction whose
    tokens are identical (float32 on a CPU: the same model, so about all of them)."""
    def first(engine):
        for p in processes:
            for b in p.get("batches", []) if p.get("engine") == engine else []:
                if b["batch"] == batch and "error" not in b:
                    return b["sample_tokens"]
        return None

    ours, theirs = first("whisper-nnx"), first("transformers")
    if not ours or not theirs:
        return None
    return sum(a == b for a, b in zip(ours, theirs)) / min(len(ours), len(theirs))


def table(rows: list[dict]) -> str:
    lines = ["| engine | batch | rounds | first call s | median s | best s | tokens/row | samples/s | tokens/s "
             "| x RT (real durations) | MLPerf-eq. x RT | vs transformers |",
             "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r['batch']} | failed: {r['error'][:150]} | | | | | | | | | |")
            continue
        ratio = f"{r['vs_transformers']:.2f}x" if "vs_transformers" in r else "-"
        lines.append(f"| {r['engine']} | {r['batch']} | {r['rounds']} | {', '.join(map(str, r['first_call_s']))} "
                     f"| {r['median_s']:.3f} | {r['min_s']:.3f} | {','.join(map(str, r['tokens_per_row']))} "
                     f"| {r['samples_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['x_realtime']:,.0f} "
                     f"| {r['mlperf_equivalent_x']:,.0f} | {ratio} |")
    return "\n".join(lines)


def peer_argv(argv: Optional[list[str]]) -> list[str]:
    """This command's arguments without --out and --summary (a worker needs the rest)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for flag in ("--out", "--summary"):
        if flag in argv:
            at = argv.index(flag)
            del argv[at:at + 2]
    return argv


def peer_record(args, argv, processes: list[dict], git: dict, machine: dict, t0: float) -> dict:
    """The record of the processes run so far: settings, the summarized rows, token agreement."""
    rows = summarize(processes, args.batch_sizes)
    random_facts = args.checkpoint / "random.json"
    settings = {"checkpoint": str(args.checkpoint), "batch_sizes": args.batch_sizes, "tokens": args.tokens,
                "rounds": args.rounds, "repeats": args.repeats, "device": args.device, "hf_compile": args.hf_compile,
                "clips": str(args.clips),
                "weights": json.loads(random_facts.read_text()) if random_facts.exists() else None,
                "peer_versions": versions(("torch", "transformers", "tokenizers", "safetensors")),
                "mlperf_sample_s": MLPERF_SAMPLE_S, "target_vs_transformers": TARGET_VS_HF,
                "command": " ".join(["benchmarks/bench_hf_peer.py", *(sys.argv[1:] if argv is None else argv)])}
    results = {"rows": rows, "token_agreement": {str(b): agreement(processes, b) for b in args.batch_sizes},
               "processes": [{k: p.get(k) for k in ("engine", "round", "wall_s", "load_s", "dtype", "error",
                                                      "device_peak_bytes", "peak_rss_bytes")} for p in processes],
               "total_s": time.perf_counter() - t0}
    rec = record("hf-peer", settings, results, git=git, machine=machine)
    ours = next((p["jax"] for p in processes if p.get("jax")), None)
    return {**rec, "jax": ours or rec["jax"]}


def main_peer(args, argv) -> int:
    """The alternation; the record is written after every process (a run cut short keeps the
    rounds it finished). This process keeps JAX on the CPU (the record's facts would otherwise
    start it on the accelerator, whose memory it would hold while the engines run); the record
    names whisper-nnx's devices instead."""
    git, machine, t0 = git_info(), machine_info(), time.perf_counter()
    worker_env = dict(os.environ)
    os.environ["JAX_PLATFORMS"] = "cpu"
    processes = []
    for round_ in range(args.rounds):
        for engine in ENGINES:
            got = spawn(engine, peer_argv(argv), args.worker_timeout, worker_env)
            processes.append({**got, "round": round_})
            brief = got.get("error") or ", ".join(f"batch {b['batch']}: " + (
                b.get("error") or f"{statistics.median(b['times_s']):.3f} s") for b in got["batches"])
            print(f"[{time.perf_counter() - t0:.0f} s] round {round_} {engine}: {brief}", flush=True)
            rec = peer_record(args, argv, processes, git, machine, t0)
            path = write_record(rec, args.out)
    rows, results = rec["results"]["rows"], rec["results"]
    print("\n" + table(rows))
    print(f"tokens identical in the first rows: {results['token_agreement']}")
    print(f"record: {path}  ({results['total_s']:.0f} s)")
    return 0 if all("error" not in r for r in rows) else 1


# --- one table of a run_accel_gpu.sh output folder ---------------------------------------------------

def read_records(folder: Path) -> list[dict]:
    """Every benchmark record (JSON with a "benchmark") in `folder`."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and "benchmark" in rec:
            found.append({**rec, "path": path.name})
    return found


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per measured thing: files to records (bench_feed --device-model: the warm clips
    run, the warm whole-corpus run), device-only (bench_accel, and the peer's whisper-nnx rows)
    and transformers; files-to-records clips rows get their share of the device-only rate of the
    same model and batch (target 90%)."""
    rows = []
    for rec in records:
        s, r = rec["settings"], rec["results"]
        if rec["benchmark"] == "feed-device":
            for run in r:
                if run["run"] in ("clips", "corpus"):
                    rows.append({"what": f"files to records, {run['run']}", "model": s["label"],
                                 "weights": s["weights"],
                                 "batch": s["batch_size"], "samples_per_s": run["files_per_s"] if run["run"] == "clips"
                                 else None, "tokens_per_s": run["tokens_per_s"], "x_realtime": run["rate_x"],
                                 "record": rec["path"]})
        elif rec["benchmark"] == "accel":
            for b in r["batches"]:
                if "error" not in b:
                    rows.append({"what": f"device-only, 30 s windows, {s['tokens']} tokens", "model": s["model"],
                                 "weights": "random", "batch": b["batch"], "samples_per_s": b["windows_per_s"],
                                 "tokens_per_s": b["tokens_per_s"], "x_realtime": b["x_realtime"],
                                 "record": rec["path"]})
        elif rec["benchmark"] == "hf-peer":
            model = (s.get("weights") or {}).get("model", Path(s["checkpoint"]).name)
            for b in r["rows"]:
                if "error" not in b:
                    rows.append({"what": f"device-only clips, {b['engine']}, {s['tokens']} tokens", "model": model,
                                 "weights": "random", "batch": b["batch"], "samples_per_s": b["samples_per_s"],
                                 "tokens_per_s": b["tokens_per_s"], "x_realtime": b["x_realtime"],
                                 "vs_transformers": b.get("vs_transformers"), "record": rec["path"]})
    for row in rows:
        if row["what"] == "files to records, clips":
            device = next((d for d in rows if d["what"].startswith("device-only clips, whisper-nnx")
                           and d["model"] == row["model"] and d["batch"] == row["batch"]), None)
            if device:
                row["of_device_only"] = row["samples_per_s"] / device["samples_per_s"]
    return rows


def summary_table(rows: list[dict]) -> str:
    lines = ["| what | model | weights | batch | samples/s | tokens/s | x real time | of device-only "
             "| vs transformers |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def fmt(key, spec):
            return "-" if r.get(key) is None else format(r[key], spec)
        lines.append(f"| {r['what']} | {r['model']} | {r['weights']} | {r['batch']} | {fmt('samples_per_s', ',.1f')} "
                     f"| {fmt('tokens_per_s', ',.0f')} | {fmt('x_realtime', ',.0f')} | {fmt('of_device_only', '.1%')} "
                     f"| {fmt('vs_transformers', '.2f')} |")
    return "\n".join(lines)


def main_summary(folder: Path) -> int:
    rows = summary_rows(read_records(folder))
    print(summary_table(rows))
    (folder / "summary.json").write_text(json.dumps({"rows": rows, "targets": {
        "files_to_records_of_device_only": TARGET_E2E, "vs_transformers": TARGET_VS_HF}}, indent=1) + "\n")
    print(f"summary: {folder / 'summary.json'}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summary is not None:
        return main_summary(args.summary)
    if args.checkpoint is None or args.clips is None:
        raise SystemExit("--checkpoint and --clips are needed (or --summary DIR)")
    if args.worker:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return worker(args)
    return main_peer(args, argv)


if __name__ == "__main__":
    sys.exit(main())
