"""Run-level options: how a whole input is transcribed (`TranscribeOptions`), composed of one
small frozen dataclass per concern, each checking its own fields:

- `decode`: how a window decodes (`decode.options.DecodeOptions`: search, fallback, rules,
  prompts);
- `long_form`: how files longer than a window are cut and prompted (`longform.LongFormOptions`);
- `vad`: voice activity (`vad.VadOptions`), None when off;
- `reading`: how audio is read (`ReadOptions`: threads, spooling, memory bound);
- and the run's own: language, batch size.

`TranscribeOptions.from_kwargs` takes the flat names of openai-whisper's `transcribe(**options)`
and of this package's CLI flags (`beam_size=5, long_form="chunked", vad=True, ...`) and routes
each to its concern; `transcribe(paths, model, **options)` and the CLI build options that way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from absl import logging

from .decode.options import DECODE_CONCERNS, DecodeOptions, route
from .longform import LongFormOptions
from .vad import CHUNKED_MIN_SILENCE_MS, VadOptions

# Flat names whose field in the concern is spelled otherwise (the CLI's and the reference's).
_RENAMED = {"long_form": ("long_form", "mode"), "vad_threshold": ("vad", "threshold"),
            "vad_min_silence_ms": ("vad", "min_silence_duration_ms")}


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How input audio is read: threads decoding ahead of the device, and the memory bound."""

    audio_workers: int = 2  # threads decoding audio ahead of the device
    # A file longer than this is decoded to a spool on disk and framed from there, and the
    # files held in memory (read ahead, or being decoded) hold at most this much audio.
    spool_after_s: float = 600.0
    spool_dir: Optional[str] = None  # None: the system's temp folder (put it on a disk, not tmpfs)
    max_audio_in_memory_s: float = 7200.0

    def __post_init__(self) -> None:
        if self.audio_workers < 1:
            raise ValueError(f"audio_workers must be >= 1, got {self.audio_workers}")
        if self.spool_after_s <= 0 or self.max_audio_in_memory_s <= 0:
            raise ValueError("spool_after_s and max_audio_in_memory_s must be > 0")


@dataclasses.dataclass(frozen=True)
class TranscribeOptions:
    """How a whole run transcribes its inputs: the run's own fields plus one of each concern."""

    language: Optional[str] = None  # None: detect per input (multilingual models)
    # Detection over up to this many 30 s windows from the start of a file: the first whose
    # top language is more likely than the threshold decides, else the language most windows
    # found (faster-whisper's language_detection_segments / _threshold; 1: the first window only)
    language_detection_segments: int = 1
    language_detection_threshold: float = 0.5
    # sequential, multilingual, detected language: detect again on every window and decode it in
    # the language found there (a file that switches languages); each segment records its own
    language_per_window: bool = False
    batch_size: int = 8  # windows decoded together (from one file or many)
    decode: DecodeOptions = DecodeOptions()
    long_form: LongFormOptions = LongFormOptions()
    vad: Optional[VadOptions] = None  # voice-activity detection (Silero): decode speech only
    reading: ReadOptions = ReadOptions()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.language_detection_segments < 1 or not 0 <= self.language_detection_threshold <= 1:
            raise ValueError("language_detection_segments must be >= 1 and language_detection_threshold in [0, 1]")
        if self.language_per_window and (self.language is not None or self.chunked):
            raise ValueError("language_per_window detects each window's language in sequential long-form: "
                             "it needs the language detected (no language given) and sequential mode")
        if self.vad is not None and self.long_form.clip_timestamps is not None:
            raise ValueError("clip_timestamps name spans of the file; with vad the decoder sees only its speech: "
                             "use one or the other")
        if self.chunked and self.decode.rules.without_timestamps and self.vad is not None:
            logging.warning("chunked long-form with vad and without timestamps cannot continue a chunk whose window "
                            "stops early: a chunk with under a token per second of speech is decoded again in halves, "
                            "a smaller loss stays lost (see README, 'Long files')")

    @property
    def chunked(self) -> bool:
        return self.long_form.mode == "chunked"

    def as_decoded(self) -> "TranscribeOptions":
        """The options windows are decoded with. Chunked long-form over overlapping chunks (no
        vad) decodes with timestamps even when asked for text only: the overlaps are stitched on
        timed segments and a chunk whose window stops early is continued from its last timestamp
        (text-only chunks lost 5-14 WER points on the long recordings, benchmarks/RESULTS.md);
        the text comes out in timed segments."""
        if not (self.chunked and self.vad is None and self.decode.rules.without_timestamps):
            return self
        rules = dataclasses.replace(self.decode.rules, without_timestamps=False)
        return dataclasses.replace(self, decode=dataclasses.replace(self.decode, rules=rules))

    @classmethod
    def from_kwargs(cls, **flat: Any) -> "TranscribeOptions":
        """From flat names: the run's own (`language`, `batch_size`), any `DecodeOptions` name
        (`beam_size`, `temperature`, `prompt`, ...), any `LongFormOptions` one (`long_form` for
        its mode), `vad` (a bool), `vad_threshold`, `vad_min_silence_ms`, and any `ReadOptions`
        one. An unknown name raises TypeError."""
        flat = dict(flat)
        vad_on = flat.pop("vad", False)
        renamed: dict[str, dict[str, Any]] = {}
        for name, (field, inner) in _RENAMED.items():
            if name in flat:
                renamed.setdefault(field, {})[inner] = flat.pop(name)
        concerns = {"long_form": LongFormOptions, "reading": ReadOptions}
        decode_names = {f.name for kind in DECODE_CONCERNS.values() for f in dataclasses.fields(kind)} | {"task"}
        decode = {name: flat.pop(name) for name in list(flat) if name in decode_names}
        own = ("language", "batch_size", "language_detection_segments", "language_detection_threshold",
               "language_per_window")
        kwargs = route(flat, own=own, concerns=concerns, where="TranscribeOptions")
        kwargs["decode"] = DecodeOptions.from_kwargs(**decode)
        kwargs["long_form"] = dataclasses.replace(kwargs.get("long_form", LongFormOptions()),
                                                  **renamed.get("long_form", {}))
        vad = renamed.get("vad", {})
        if kwargs["long_form"].mode == "chunked":
            vad.setdefault("min_silence_duration_ms", CHUNKED_MIN_SILENCE_MS)
        kwargs["vad"] = VadOptions(**vad) if vad_on else None
        return cls(**kwargs)
