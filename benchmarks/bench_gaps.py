"""Stretches without speech inside recordings: what the default (`--skip-non-speech 5`), the
reference's behaviour (`--skip-non-speech off`) and `--vad` write there and what they cost, and
what skipping does to WER on the long speech recordings.

    .venv/bin/python benchmarks/bench_gaps.py [--hours 4] [--off-hours 0.5] [--results-md]

Recordings (generated here, 16 kHz 16-bit, tiny.en's CLI defaults: beam 5, temperature fallback):
- "gappy-5min": a sentence, 150 s of digital silence, 150 s of faint white noise (-50 dBFS), a
  sentence (27 spoken words);
- "silent-Nh": a sentence, N hours of digital silence, the sentence again (30 spoken words); the
  reference's behaviour runs on a shorter copy (`--off-hours`): it decodes every window;
- the test suite's 3.5-minute lecture (a 6 s pause inside) and benchmarks' 10-minute reading
  (three pauses of 5-6 s), with their scripts: WER of each setting.
Each run is one whole `whisper-nnx transcribe` process; the table gives words written (against
words spoken), windows decoded, wall time, and WER where a script exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, git_info, machine_info, publish, record, run_cli
from speech import write_wav

from whisper_nnx.engine.evaluation import wer

RATE = 16000
SETTINGS = {"default": [], "off (reference)": ["--skip-non-speech", "off"], "--vad": ["--vad"]}
SUBSECTION = "non-speech inside recordings, {commit_label}"
REPORT = ("`{command}`; {versions}; tiny.en, CLI defaults (beam 5, temperature fallback), one whole process per "
          "cell. Record: `{record}`.")


def _silent_recording(path: Path, sentence: Path, hours: float) -> Path:
    """sentence + `hours` of digital silence + sentence, streamed by ffmpeg (never in memory)."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(sentence),
                    "-f", "lavfi", "-t", str(hours * 3600), "-i", f"anullsrc=r={RATE}:cl=mono", "-i", str(sentence),
                    "-filter_complex", "[0:a][1:a][2:a]concat=n=3:v=0:a=1", "-ar", str(RATE), "-ac", "1",
                    "-sample_fmt", "s16", str(path)], check=True)
    return path


def recordings(directory: Path, hours: float, off_hours: float) -> list[dict]:
    """[{name, path, spoken words, script or None, settings to run}]."""
    from make_bench_audio import long_recording

    from whisper_nnx.engine.audio import load_audio

    data = REPO / "tests" / "data"
    scripts = json.loads((data / "transcripts.json").read_text())
    corpus = json.loads((data / "corpus" / "transcripts.json").read_text())
    joe, keys = load_audio(data / "sample_joe.flac"), load_audio(data / "corpus" / "joe_keys.flac")
    noise = np.random.default_rng(1).standard_normal(150 * RATE) * 3e-3
    gappy = np.concatenate([joe, np.zeros(150 * RATE), noise, keys])
    joe_words = len(scripts["sample_joe.flac"].split())
    out = [{"name": "gappy-5min", "path": write_wav(directory / "gappy-5min.wav", gappy),
            "spoken": joe_words + len(corpus["joe_keys.flac"].split()), "script": None, "settings": list(SETTINGS)}]
    for h, settings in ((hours, ["default", "--vad"]), (off_hours, list(SETTINGS))):
        out.append({"name": f"silent-{h:g}h", "spoken": 2 * joe_words, "script": None, "settings": settings,
                    "path": _silent_recording(directory / f"silent-{h:g}h.flac", data / "sample_joe.flac", h)})
    lecture = json.loads((data / "longform" / "lecture.json").read_text())
    reading, meta = long_recording(600.0)
    for name, path, text in (("lecture-3.5min", data / "longform" / "lecture.ogg", lecture["text"]),
                             ("reading-10min", reading, meta["text"])):
        out.append({"name": name, "path": path, "spoken": len(text.split()), "script": text,
                    "settings": list(SETTINGS)})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=4.0, help="digital silence in the long recording")
    p.add_argument("--off-hours", type=float, default=0.5, help="the same for the run of every window")
    p.add_argument("--results-md", action="store_true")
    args = p.parse_args(argv)
    git, machine = git_info(), machine_info()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    directory = Path(tempfile.mkdtemp(prefix="whisper-nnx-gaps-audio-"))
    rows, results = [], {}
    for rec_in in recordings(directory, args.hours, args.off_hours):
        for setting in rec_in["settings"]:
            got = run_cli(rec_in["path"], SETTINGS[setting], env, Path(tempfile.mkdtemp(prefix="whisper-nnx-gaps-")))
            if rec_in["script"] is not None and "text" in got:
                got["wer"] = wer(rec_in["script"], got["text"])
            results[f"{rec_in['name']} / {setting}"] = got
            score = f"{100 * got['wer']:.2f}" if "wer" in got else "-"
            row = (f"| {rec_in['name']} | {setting} | {got.get('words', 'error')} of {rec_in['spoken']} | "
                   f"{got.get('windows', '-')} | {got['wall_s']:.1f} | {score} |")
            print(row, flush=True)
            rows.append(row)
    table = "\n".join(["| recording | setting | words written (of spoken) | windows | wall s | WER % |",
                       "|---|---|---|---|---|---|", *rows])
    rec = record("gaps", {"hours": args.hours, "off_hours": args.off_hours, "model": "tiny.en"}, results, git,
                 machine)
    publish(rec, table, SUBSECTION, REPORT, "bench_gaps.py", argv, args.results_md)


if __name__ == "__main__":
    main()
