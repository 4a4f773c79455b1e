"""Words made up from no speech: a noise-only set through whisper-nnx, openai-whisper and
faster-whisper (tiny.en, the same weights), counting the words each writes.

    .venv/bin/python benchmarks/bench_noise.py [--results-md]

The set (generated here, seeded, 16 kHz; none holds a word): white noise at two levels, pink
noise, babble (six of the test corpus's clips reversed and overlaid: speech-like, no words), a
"melody" of harmonic tones with note changes, low-level 50 Hz hum with harmonics, digital
silence with faint noise bursts; 5-30 s each. Every file should give no words.

Settings (each tool's defaults where not named): ours, the CLI as a user runs it (sequential,
beam 5, temperature fallback) plain, with `--vad`, with `--word-timestamps
--hallucination-silence-threshold 2`, and with the opt-in `--hallucination-filter` (with and
without `--vad`); openai-whisper's `transcribe` with its CLI's defaults
(beam 5, best of 5, fallback) plain and with `hallucination_silence_threshold=2` (and word
timestamps); faster-whisper's `transcribe` (int8, beam 5) plain and with `vad_filter=True`.
The table counts words per file and in total; a JSON record keeps every text.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, git_info, machine_info, machine_title, record, report_fields, update_results_md, write_record
from speech import write_wav

RATE = 16000
SUBSECTION = "words on noise (no speech), {commit_label}"
REPORT = ("`{command}`; {versions}, openai-whisper {openai_whisper}, faster-whisper {faster_whisper}; tiny.en, the "
          "same weights in each. {files} files, {seconds:.0f} s, no speech in any: every word is made up. "
          "Record: `{record}`.")


def _pink(n: int, rng) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    x = np.fft.irfft(spectrum, n)
    return x / np.abs(x).max()


def noise_set(seed: int = 0) -> dict[str, np.ndarray]:
    """name -> float32 samples [n] at 16 kHz."""
    from whisper_nnx.engine.audio import load_audio

    rng = np.random.default_rng(seed)
    t = lambda s: np.arange(int(s * RATE)) / RATE  # noqa: E731
    clips = sorted((REPO / "tests" / "data" / "corpus").glob("*.flac"))[:6]
    babble = np.zeros(int(12 * RATE))
    for i, clip in enumerate(clips):
        x = load_audio(clip)[::-1]
        start = int(i * 1.3 * RATE) % (babble.size // 2)
        babble[start:start + x.size] += x[:babble.size - start]
    notes = [220.0, 247.0, 262.0, 294.0, 330.0, 294.0, 262.0, 247.0] * 3
    melody = np.concatenate([sum(np.sin(2 * np.pi * f * k * t(0.75)) / k for k in (1, 2, 3))
                             * np.exp(-3 * t(0.75)) for f in notes])
    hum = sum(np.sin(2 * np.pi * 50 * k * t(20)) / k for k in (1, 2, 3, 5))
    bursts = np.zeros(int(30 * RATE))
    for start in rng.integers(0, bursts.size - RATE, 6):
        bursts[start:start + RATE // 4] = rng.standard_normal(RATE // 4) * 0.05
    sets = {"white-loud": rng.standard_normal(int(10 * RATE)) * 0.1,
            "white-faint": rng.standard_normal(int(25 * RATE)) * 0.003,
            "pink": _pink(int(15 * RATE), rng) * 0.2,
            "babble": babble / np.abs(babble).max() * 0.3,
            "melody": melody / np.abs(melody).max() * 0.3,
            "hum": hum / np.abs(hum).max() * 0.02,
            "silence-bursts": bursts,
            "white-short": rng.standard_normal(int(5 * RATE)) * 0.03}
    return {k: np.clip(v, -1, 1).astype(np.float32) for k, v in sets.items()}


def run_ours(files: list[Path], flags: list[str], env: dict) -> dict[str, str]:
    out = Path(tempfile.mkdtemp(prefix="whisper-nnx-noise-"))
    subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *map(str, files), "--output-dir",
                    str(out), "--quiet", "--no-progress", *flags], env=env, check=False, capture_output=True)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {Path(r["path"]).stem: r["text"] for r in records}


def run_openai(files: list[Path], checkpoint, **options) -> dict[str, str]:
    import torch
    import whisper

    from whisper_nnx.engine.audio import load_audio
    from whisper_nnx.engine.checkpoints.reference import reference_model

    torch.set_num_threads(2)
    model = reference_model(checkpoint.dims, checkpoint.params, alignment_heads=checkpoint.alignment_heads)
    defaults = dict(language="en", fp16=False, beam_size=5, best_of=5,
                    temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    return {f.stem: whisper.transcribe(model, load_audio(f), **defaults, **options)["text"] for f in files}


def run_faster(files: list[Path], directory: Path, **options) -> dict[str, str]:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(directory), device="cpu", compute_type="int8", cpu_threads=2)
    out = {}
    for f in files:
        segments, _ = model.transcribe(str(f), language="en", beam_size=5, **options)
        out[f.stem] = "".join(s.text for s in segments).strip()
    return out


def words(text: str) -> int:
    return len(text.split())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results-md", action="store_true")
    args = p.parse_args(argv)
    git, machine = git_info(), machine_info()
    from whisper_nnx.engine.checkpoints.formats import read_checkpoint
    from whisper_nnx.engine.checkpoints.hub import resolve_model

    folder = Path(tempfile.mkdtemp(prefix="whisper-nnx-noise-set-"))
    audio = noise_set()
    files = [write_wav(folder / f"{name}.wav", x) for name, x in audio.items()]
    path = resolve_model("tiny.en")
    checkpoint = read_checkpoint(path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    settings = {
        "ours": lambda: run_ours(files, [], env),
        "ours --vad": lambda: run_ours(files, ["--vad"], env),
        "ours --hallucination-silence-threshold 2": lambda: run_ours(
            files, ["--word-timestamps", "--hallucination-silence-threshold", "2"], env),
        "ours --hallucination-filter": lambda: run_ours(files, ["--hallucination-filter"], env),
        "ours --vad --hallucination-filter": lambda: run_ours(files, ["--vad", "--hallucination-filter"], env),
        "openai-whisper": lambda: run_openai(files, checkpoint),
        "openai-whisper hallucination_silence_threshold=2": lambda: run_openai(
            files, checkpoint, word_timestamps=True, hallucination_silence_threshold=2.0),
        "faster-whisper": lambda: run_faster(files, path),
        "faster-whisper vad_filter": lambda: run_faster(files, path, vad_filter=True),
    }
    texts = {}
    for name, run in settings.items():
        texts[name] = run()
        print(f"{name}: {sum(words(t) for t in texts[name].values())} words", flush=True)
    names = [f.stem for f in files]
    lines = ["| setting | " + " | ".join(names) + " | total |", "|---|" + "---:|" * (len(names) + 1)]
    for name, got in texts.items():
        counts = [words(got.get(n, "")) for n in names]
        lines.append(f"| {name} | " + " | ".join(map(str, counts)) + f" | **{sum(counts)}** |")
    table = "\n".join(lines)
    seconds = sum(x.size for x in audio.values()) / RATE
    rec = record("noise", {"files": {n: audio[n].size / RATE for n in names},
                           "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])},
                 {"texts": texts}, git=git, machine=machine)
    from importlib.metadata import version
    rec["versions"]["faster-whisper"] = version("faster-whisper")
    out = write_record(rec)
    print(table + f"\nrecord: {out.relative_to(REPO)}")
    if args.results_md:
        fields = {**report_fields(rec, out), "files": len(names), "seconds": seconds}
        update_results_md(machine_title(rec), SUBSECTION.format(**fields), REPORT.format(**fields) + "\n\n" + table)


if __name__ == "__main__":
    main()
