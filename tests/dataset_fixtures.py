"""Speech datasets in the layouts users bring, built from the test clips: a Parquet file and a
save_to_disk folder written by Hugging Face `datasets`, a WebDataset shard, a NeMo manifest whose
entries are spans (offset, duration) of one concatenated recording."""

from __future__ import annotations

import io
import json
import tarfile
import wave
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
CLIPS = ("joe_cat.flac", "espeak_apples.flac", "joe_keys.flac")
GAP_S = 1.0  # silence between the clips of the concatenated recording


def texts() -> dict[str, str]:
    return json.loads((CORPUS / "transcripts.json").read_text())


def write_parquet(path: Path, clips=CLIPS, row_group_size: int | None = None) -> Path:
    """`datasets.Dataset.to_parquet` of rows {audio: Audio feature, text, id}."""
    import datasets

    spoken = texts()
    ds = datasets.Dataset.from_dict({"audio": [{"bytes": (CORPUS / n).read_bytes(), "path": n} for n in clips],
                                     "text": [spoken[n] for n in clips], "id": [f"utt-{n[:-5]}" for n in clips]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    kwargs = {} if row_group_size is None else {"batch_size": row_group_size}
    ds.to_parquet(str(path), **kwargs)
    return path


def write_saved(folder: Path, clips=CLIPS) -> Path:
    """`datasets.Dataset.save_to_disk` of the same rows."""
    import datasets

    spoken = texts()
    ds = datasets.Dataset.from_dict({"audio": [{"bytes": (CORPUS / n).read_bytes(), "path": n} for n in clips],
                                     "text": [spoken[n] for n in clips]})
    ds.cast_column("audio", datasets.Audio(decode=False)).save_to_disk(str(folder))
    return folder


def write_shard(path: Path, clips=CLIPS, json_text: bool = False) -> Path:
    """A WebDataset shard: `sampleNNN.flac` plus `sampleNNN.txt` (or `.json` with `text`)."""
    spoken = texts()
    with tarfile.open(path, "w") as tar:
        for i, name in enumerate(clips):
            text = json.dumps({"text": spoken[name]}).encode() if json_text else spoken[name].encode()
            for ext, data in (("flac", (CORPUS / name).read_bytes()), ("json" if json_text else "txt", text)):
                info = tarfile.TarInfo(f"sample{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """16-bit PCM mono (lossless for samples decoded from 16-bit files)."""
    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def write_nemo(folder: Path, clips=CLIPS) -> tuple[Path, list[tuple[float, float]]]:
    """`recording.wav` (the clips, each padded to whole 10 ms, with GAP_S of silence between) and
    `manifest.jsonl`, one NeMo line per clip: `audio_filepath` relative to the manifest, `offset`,
    `duration`, `text`."""
    from whisper_nnx.engine.audio import load_audio

    spoken, parts, spans, at = texts(), [], [], 0.0
    gap = np.zeros(int(GAP_S * 16000), np.float32)
    for name in clips:
        audio = load_audio(CORPUS / name)
        audio = np.pad(audio, (0, -audio.size % 160))  # whole 10 ms: spans exact in a manifest's decimals
        spans.append((at, audio.size / 16000))
        parts += [audio, gap]
        at += (audio.size + gap.size) / 16000
    write_wav(folder / "recording.wav", np.concatenate(parts))
    lines = [{"audio_filepath": "recording.wav", "offset": round(start, 4), "duration": round(length, 4),
              "text": spoken[name]} for name, (start, length) in zip(clips, spans)]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest, spans
