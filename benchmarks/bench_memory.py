"""Peak memory against file duration: one recording of 1 min, 1 h and 4 h through the CLI.

Each recording is a spoken sentence at its start and end with quiet noise between (FLAC, so a
4-hour input is small on disk and decodes to 0.9 GB of float32). Every run is a fresh
`whisper-nnx transcribe` process (tiny.en, greedy, --vad so that only the speech is decoded and
the run measures the audio path rather than hours of decoding), its peak RSS read from the
kernel (wait4). Two settings, alternating: the default (files over --spool-after are spooled to
disk) and everything in memory (--spool-after and --max-audio-in-memory set past the file).

    python benchmarks/bench_memory.py [--durations 60,3600,14400] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import record, write_record  # the script's own folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "sample_joe.flac"
RATE = 16000


def build(path: Path, seconds: int) -> None:
    """Speech, `seconds` minus both sentences of faint noise, speech; written in 60 s blocks."""
    import av

    from whisper_nnx.engine.audio import load_audio

    speech = load_audio(SAMPLE)
    rng = np.random.default_rng(0)
    total = seconds * RATE
    middle = total - 2 * speech.size
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=RATE, layout="mono")
        stream.format = "s16"
        written = 0

        def put(block: np.ndarray) -> None:
            nonlocal written
            pcm = np.round(np.clip(block, -1, 1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, written
            for packet in stream.encode(frame):
                container.mux(packet)
            written += block.size

        put(speech)
        for start in range(0, middle, 60 * RATE):
            put((1e-4 * rng.standard_normal(min(60 * RATE, middle - start))).astype(np.float32))
        put(speech)
        for packet in stream.encode(None):
            container.mux(packet)


def run_once(audio: Path, out: Path, in_memory: bool, env: dict) -> dict:
    args = [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", str(audio), "--output-dir", str(out),
            "--beam-size", "0", "--temperature-increment-on-fallback", "0", "--vad", "--quiet", "--no-progress",
            "--formats", "txt"]
    if in_memory:
        args += ["--spool-after", "1e9", "--max-audio-in-memory", "1e9"]
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stderr = proc.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"run failed ({code}): {stderr[-2000:]}")
    text = (next(out.glob("*.txt"))).read_text()
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 2),
            "fox_found": text.lower().count("fox")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durations", default="60,3600,14400", help="seconds, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the recordings are built (default: a temp dir)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    durations = [int(float(d)) for d in args.durations.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seconds in durations:
        audio = work / f"rec-{seconds}s.flac"
        if not audio.exists():
            build(audio, seconds)
        for repeat in range(args.repeats):
            for in_memory in (False, True):  # alternating
                out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
                result = run_once(audio, out, in_memory, env)
                rows.append({"duration_s": seconds, "mode": "in memory" if in_memory else "default (spooled)",
                             "repeat": repeat, "input_mib": round(audio.stat().st_size / 2**20, 1),
                             "decoded_mib": round(seconds * RATE * 4 / 2**20, 1), **result})
                print(rows[-1], flush=True)
    header = "| duration | input | decoded float32 | mode | peak RSS (MiB) | wall (s) | both sentences found |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['duration_s'] / 60:g} min | {r['input_mib']} MiB | {r['decoded_mib']} MiB | {r['mode']} "
                     f"| {r['peak_rss_mib']} | {r['wall_s']} | {r['fox_found'] == 2} |")
    table = "\n".join(lines)
    print(table)
    rec = record("memory", {"durations_s": durations, "model": "tiny.en", "vad": True, "greedy": True,
                            "repeats": args.repeats}, rows)
    path = write_record(rec, args.out)
    print(f"record: {path}")


if __name__ == "__main__":
    main()
