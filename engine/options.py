"""Run-level options: how a whole input is transcribed (`TranscribeOptions`), composed of the
per-window decoding options (`decoding.DecodeOptions`) and what applies to whole files: long
form, voice activity, memory and threads."""

from __future__ import annotations

import dataclasses
from typing import Optional

from absl import logging

from .decode.window_decoder import DecodeOptions
from .longform import LongFormOptions


@dataclasses.dataclass(frozen=True)
class TranscribeOptions(DecodeOptions):
    """DecodeOptions plus what applies to whole inputs."""

    language: Optional[str] = None  # None: detect per input (multilingual models)
    batch_size: int = 8  # windows decoded together (from one file or many)
    long_form: str = "sequential"  # "sequential" (the reference's seek loop) or "chunked"
    condition_on_previous_text: bool = True  # sequential: prompt each window with the text so far
    initial_prompt: Optional[str] = None  # sequential: before each file's first window; chunked: every chunk
    carry_initial_prompt: bool = False  # sequential: keep the initial prompt in every window's prompt
    chunk_stride_s: float = 5.0  # chunked: overlap on each side of a chunk
    audio_workers: int = 2  # threads decoding audio ahead of the device
    word_timestamps: bool = False  # per-word start/end/probability in each segment
    vad: bool = False  # voice-activity detection (Silero): decode speech only (pip install 'whisper-nnx[vad]')
    vad_threshold: float = 0.5  # speech probability above which a frame is speech
    vad_min_silence_ms: int = 2000  # pauses shorter than this stay inside a speech region
    # Memory: a file longer than this is decoded to a spool on disk and framed from there, and
    # the files held in memory (read ahead, or being decoded) hold at most this much audio.
    spool_after_s: float = 600.0
    spool_dir: Optional[str] = None  # None: the system's temp folder (put it on a disk, not tmpfs)
    max_audio_in_memory_s: float = 7200.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        _ = self.long_form_options  # validates the long-form fields
        if self.long_form == "chunked" and self.without_timestamps:
            logging.warning("chunked long-form without timestamps cannot continue a chunk whose window stops "
                            "early: that chunk's remaining speech is lost (see README, 'Long files')")

    @property
    def long_form_options(self) -> LongFormOptions:
        return LongFormOptions(self.long_form, self.condition_on_previous_text, self.initial_prompt,
                               self.carry_initial_prompt, self.chunk_stride_s, self.word_timestamps)
