"""Files become window requests, and batches of requests become decoded windows.

`WindowPipeline` is everything the scheduler needs from the model side, and all it gets
(`scheduler.WindowWork`):

- `prepare(files)`: frames each new file, finds its log-mel floor (the whole file's maximum,
  cut a group of windows at a time), its language and the spans it decodes (`spans.py`: spans of
  speech, chunk plans cut at pauses with voice activity), and builds its long-form job
  (`longform.py`), returned with the file's language as a `PreparedFile`;
- `decode(requests)`: cuts each request's samples, makes the batch's log-mel, detects the
  language of the windows that ask for it (language per window: set in their prompts, and
  handed back on their `DecodedWindow`), decodes it with temperature fallback
  (`decode.window_decoder.WindowDecoder`) and, with word timestamps, aligns the words, padding
  the batch and agreeing its shape with the other processes.

Shapes: B windows, M mels, N frames (3000), W = WINDOW_SAMPLES.
"""

from __future__ import annotations

import contextlib
import dataclasses
import zlib
from typing import Callable, ContextManager, Optional

import jax
import numpy as np

from whisper_nnx.sharding import multihost

from .audio import N_FRAMES
from .decode.generate import Generator
from .decode.tokenizer import Tokenizer
from .decode.window_decoder import DecodedWindow, WindowDecoder, bucket, fit_rows, is_silence, lockstep_rows, pad_rows
from .features import WINDOW_SAMPLES, WindowFeatures
from .longform import ChunkedFile, PreparedFile, SequentialFile, WindowRequest
from .options import TranscribeOptions
from .reading import LoadedInput
from .segments import aligned_tokens
from .spans import Span, floor_spans, speech_chunks, speech_spans, stride_chunks
from .spool import SpeechView, Windowed
from .vad import SpeechMap


def detect_languages(generator: Generator, tokenizer: Tokenizer, mel: jax.Array, n: Optional[int] = None
                     ) -> list[tuple[str, dict[str, float]]]:
    """Per row of the first n (default: all) of mel [B, M, N]: (best language code, probabilities
    of every language)."""
    n = mel.shape[0] if n is None else n
    padded = fit_rows(mel, n, lockstep_rows(n, generator.batch_multiple))
    probs = generator.fetch(generator.language_probs(padded, tokenizer.sot, tuple(tokenizer.all_language_tokens)),
                            padded.shape[0])[:n]
    codes = tokenizer.all_language_codes
    return [(codes[int(row.argmax())], {c: float(p) for c, p in zip(codes, row)}) for row in probs]


def choose_language(windows: list[tuple[str, dict[str, float]]], threshold: float) -> tuple[str, dict[str, float]]:
    """A file's language from its windows' detections, in order, as faster-whisper decides: the
    first window whose top language is more likely than `threshold`, else the language that
    most windows put first (ties: the one found first), with the probabilities of its most
    confident window."""
    for code, probs in windows:
        if probs[code] > threshold:
            return code, probs
    votes: dict[str, list[dict[str, float]]] = {}
    for code, probs in windows:
        votes.setdefault(code, []).append(probs)
    code = max(votes, key=lambda c: len(votes[c]))
    return code, max(votes[code], key=lambda probs: probs[code])


@dataclasses.dataclass
class _Framed:
    """A file as its job will see it."""

    audio: Windowed  # the samples the job decodes
    plan: Optional[list[Span]]  # chunked: each chunk
    file_time: Optional[Callable]  # voice activity, sequential: decoded time -> the file's time
    spans: Optional[list[Span]] = None  # skipping non-speech: the spans to decode
    speech: Optional[list[Span]] = None  # chunks cut at pauses: the voice-activity spans they hold

    @property
    def first_frame(self) -> int:
        """Where the file's speech starts (0 unless a long lead without speech is skipped)."""
        return self.spans[0].first if self.spans else 0


def _attempt(step: Callable, *args):
    """`step(*args)`, or the exception it raised (one file's failure is that file's)."""
    try:
        return step(*args)
    except Exception as err:  # noqa: BLE001 - becomes that file's error record
        return err


def window_seed(request: WindowRequest) -> int:
    """A window's own sampling seed, from what identifies it (its file's length, its start and
    its prompt): a retried window draws the same samples whatever batch it lands in."""
    key = np.asarray([request.job.audio.n_samples, request.frame, *request.prompt], np.int64)
    return zlib.crc32(key.tobytes())


class WindowPipeline:
    """The model side of long-form transcription for one run's options."""

    def __init__(self, generator: Generator, decoder: WindowDecoder, tokenizer: Tokenizer,
                 alignment_heads: tuple, options: TranscribeOptions, features: Optional[WindowFeatures] = None,
                 device_turn: Optional[ContextManager] = None):
        """`features`: where windows' log-mel is computed (default: on the device, `WindowFeatures`);
        `device_turn`: held while a batch's or new files' device programs run and are read back (a
        lock: one at a time, whatever thread calls; default: no lock)."""
        self.generator, self.decoder, self.tokenizer = generator, decoder, tokenizer
        self.dims, self.alignment_heads, self.options = decoder.dims, alignment_heads, options
        self.features = features if features is not None else WindowFeatures()
        self.device_turn = device_turn if device_turn is not None else contextlib.nullcontext()

    def prepare(self, arrivals: list[LoadedInput]) -> list[PreparedFile | BaseException]:
        """Per new file: its long-form job and language (`PreparedFile`), or the exception that
        file raised. Frames each file, finds its loudness maximum (the log-mel floor) and
        its language, and builds its job. With voice activity, a sequential job decodes the
        speech put back to back (times mapped back at the end) and a chunked job gets chunks
        cut at pauses; skipping non-speech, jobs decode only the file's spans of speech. A file
        that fails on the host fails alone, and the batched device calls (the same on every
        process) go on for the others."""
        framed = [_attempt(self._frame, loaded) for loaded in arrivals]
        good = [f for f in framed if not isinstance(f, BaseException)]
        with self.device_turn:
            log_mel_maxes, chunk_log_mel_max = self._maxima(good)
            languages = self._file_languages([f.audio for f in good], log_mel_maxes, [f.first_frame for f in good])
        jobs = iter([_attempt(self._job, f, log_mel_max, chunk_max, language)
                     for f, log_mel_max, chunk_max, language in zip(good, log_mel_maxes, chunk_log_mel_max, languages)])
        return [f if isinstance(f, BaseException) else next(jobs) for f in framed]

    def _frame(self, loaded: LoadedInput) -> "_Framed":
        """The audio a file's job decodes (a view of its speech, sequential with voice activity),
        the spans it decodes when non-speech is skipped, and, chunked, its chunk plan."""
        chunked, long_form = self.options.chunked, self.options.long_form
        vad = loaded.speech is not None and self.options.vad is not None
        if vad and not chunked:  # the speech is a view over the file (no copy)
            return _Framed(SpeechView(loaded.audio, loaded.speech), None, SpeechMap(loaded.speech).restore)
        frames = loaded.audio.audio_frames
        spans = speech_spans(loaded.speech, frames, long_form.skip_non_speech_s) \
            if loaded.speech is not None and not vad else None
        if not chunked:
            return _Framed(loaded.audio, None, None, spans)
        if vad:
            return _Framed(loaded.audio, speech_chunks(loaded.speech, frames), None, None,
                           speech=speech_spans(loaded.speech, frames, 0.0))
        return _Framed(loaded.audio, stride_chunks(frames, long_form.chunk_stride_s, spans), None, spans)

    def _maxima(self, files: list["_Framed"]) -> tuple[list[float], list[list[float]]]:
        """Each file's whole-file maximum log10 mel power (its -8 floor) and, chunked, each of
        its chunks' maxima, from the windows of all `files` in groups."""
        spans = []  # (file, span): the whole file's windows, then its chunks
        for f, framed in enumerate(files):
            spans += [(f, span) for span in [*floor_spans(framed.audio.audio_frames), *(framed.plan or ())]]
        maxima = self._window_maxima(spans, [f.audio for f in files])
        log_mel_maxes, chunk_log_mel_max, at = [], [], 0
        for framed in files:
            n_whole = len(floor_spans(framed.audio.audio_frames))
            n_chunks = len(framed.plan or ())
            log_mel_maxes.append(float(maxima[at:at + n_whole].max()))
            chunk_log_mel_max.append([float(m) for m in maxima[at + n_whole:at + n_whole + n_chunks]])
            at += n_whole + n_chunks
        return log_mel_maxes, chunk_log_mel_max

    def _job(self, framed: "_Framed", log_mel_max: float, chunk_log_mel_max: list[float],
             language: tuple[str, Optional[dict]]) -> PreparedFile:
        code, probs = language
        tokenizer = self.tokenizer.with_language(code, self.options.decode.task) if self.tokenizer.multilingual \
            else self.tokenizer
        args = (framed.audio, log_mel_max, tokenizer, self.options.decode, self.options.long_form, self.dims.n_text_ctx)
        if framed.plan is not None:
            job = ChunkedFile(*args, chunk_log_mel_max=chunk_log_mel_max, chunks=framed.plan, speech=framed.speech)
        else:
            job = SequentialFile(*args, file_time=framed.file_time, speech_spans=framed.spans,
                                 language_per_window=self.options.language_per_window and self.tokenizer.multilingual)
        return PreparedFile(job, code, probs)

    def _window_maxima(self, spans: list[tuple[int, Span]], audios: list[Windowed], group: int = 16) -> np.ndarray:
        """Max log10 mel power of each (file, span of its frames): [len(spans)]. Windows are cut
        `group` at a time, so a long file never has all its windows in memory."""
        out = []
        for i in range(0, len(spans), group):
            part = spans[i:i + group]
            samples = np.zeros((group, WINDOW_SAMPLES), np.float32)
            audio_frames = np.zeros((group,), np.int32)
            for row, (f, span) in enumerate(part):
                samples[row], audio_frames[row] = audios[f].window(span.first), span.frames
            out.append(np.asarray(self.features.log_mel_max(samples, audio_frames, self.dims.n_mels))[:len(part)])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def _file_languages(self, audios: list, log_mel_maxes: list[float], first_frames: list[int]
                        ) -> list[tuple[str, Optional[dict]]]:
        """Per file (language, probabilities or None), unless the model is English-only or the
        options fix the language: detected on the first 30 s from `first_frames` (the file's
        start, as the reference does, or where its speech starts when a lead without speech
        is skipped), or over the first `language_detection_segments` windows from there
        (`choose_language`)."""
        options = self.options
        if not self.tokenizer.multilingual:
            return [("en", None)] * len(audios)
        if options.language is not None:
            return [(options.language, None)] * len(audios)
        # Every process makes the same detection calls (some with no rows).
        if multihost.global_max(len(audios)) == 0:
            return []
        starts = [list(range(first, max(a.audio_frames, 1), N_FRAMES))[:options.language_detection_segments] or [0]
                  for a, first in zip(audios, first_frames)]
        rows = [(f, start) for f, file_starts in enumerate(starts) for start in file_starts]
        samples = np.stack([audios[f].window(start) for f, start in rows]) if rows else \
            np.zeros((0, WINDOW_SAMPLES), np.float32)
        # The first window as the reference frames it (its whole 3000 frames); later ones up to the end.
        frames = np.asarray([N_FRAMES if start == 0 else min(N_FRAMES, audios[f].audio_frames - start)
                             for f, start in rows], np.int32)
        mel = self._window_mel(samples, frames, np.asarray([log_mel_maxes[f] for f, _ in rows], np.float32))
        found = iter(detect_languages(self.generator, self.tokenizer, mel, len(rows)))
        top5 = lambda probs: {k: round(v, 4) for k, v in sorted(probs.items(), key=lambda kv: -kv[1])[:5]}  # noqa: E731
        out = []
        for file_starts in starts:
            code, probs = choose_language([next(found) for _ in file_starts], options.language_detection_threshold)
            out.append((code, top5(probs)))
        return out

    def _window_mel(self, samples: np.ndarray, audio_frames: np.ndarray, log_mel_max: np.ndarray) -> jax.Array:
        """Long-form windows: samples [B, WINDOW_SAMPLES] -> log-mel [B', M, 3000], B' = B bucketed
        (the rows past B are silence)."""
        n = samples.shape[0]
        rows = bucket(max(n, 1))
        grown = np.zeros((rows, WINDOW_SAMPLES), np.float32)
        grown[:n] = samples
        frames, maxima = np.full((rows,), N_FRAMES, np.int32), np.zeros((rows,), np.float32)
        frames[:n], maxima[:n] = audio_frames, log_mel_max
        return self.features.log_mel(grown, frames, maxima, self.dims.n_mels)

    def decode(self, requests: list[WindowRequest]) -> list[DecodedWindow]:
        """One decoded window per request, in order (the batch is padded to a bucketed size)."""
        rows = bucket(max(len(requests), 1))
        samples = np.zeros((rows, WINDOW_SAMPLES), np.float32)
        audio_frames = np.full((rows,), N_FRAMES, np.int32)
        log_mel_max = np.zeros((rows,), np.float32)
        for row, request in enumerate(requests):
            samples[row] = request.job.audio.window(request.frame)
            audio_frames[row], log_mel_max[row] = request.audio_frames, request.log_mel_max
        prompts, seeds = [r.prompt for r in requests], [window_seed(r) for r in requests]
        options = self.options
        tokenizer = self.tokenizer.with_language(options.language or "en", options.decode.task) \
            if self.tokenizer.multilingual else self.tokenizer
        with self.device_turn:
            mel = self._window_mel(samples, audio_frames, log_mel_max)  # bucketed: the decoder takes len(prompts)
            languages = self._window_languages(mel, requests)
        prompts = [p if code is None else self._with_language(p, code) for p, code in zip(prompts, languages)]
        with self.device_turn:
            windows = self.decoder.decode(mel, tokenizer, prompts, options.decode, seeds=seeds)
        for window, code in zip(windows, languages):
            window.language = code
        if options.long_form.word_timestamps:
            with self.device_turn:
                self._align_words(mel, windows, audio_frames[:len(prompts)], prompts)
        return windows

    def _window_languages(self, mel: jax.Array, requests: list[WindowRequest]) -> list[Optional[str]]:
        """Language per window: per request, the language detected on its own window when it
        asks for one (`WindowRequest.detect_language`), else None."""
        languages: list[Optional[str]] = [None] * len(requests)
        if not self.options.language_per_window:  # the same on every process: no call to agree on
            return languages
        rows = [i for i, r in enumerate(requests) if r.detect_language]
        if multihost.global_max(len(rows)) == 0:  # every process makes the same calls
            return languages
        index = np.zeros((lockstep_rows(len(rows), 1),), np.int32)
        index[:len(rows)] = rows
        found = detect_languages(self.generator, self.tokenizer, mel[index], len(rows))
        for row, (code, _) in zip(rows, found):
            languages[row] = code
        return languages

    def _with_language(self, prompt: list[int], code: str) -> list[int]:
        """`prompt` with its language token (the one after the start sequence's
        <|startoftranscript|>) set to `code`'s."""
        prompt = list(prompt)
        at = len(prompt) - 1 - prompt[::-1].index(self.tokenizer.sot)
        prompt[at + 1] = self.tokenizer.to_language_token(code)
        return prompt

    def _align_words(self, mel: jax.Array, windows: list, audio_frames: np.ndarray,
                     prompts: list[list[int]]) -> None:
        """Attach to each window the alignment matrix and token probabilities of the text the
        reference would align (the tokens of its segments), in one batched device call."""
        tok = self.tokenizer
        n_start = len(tok.sot_sequence)
        rows, sequences = [], []
        for row, (window, prompt) in enumerate(zip(windows, prompts)):
            text = [t for t in aligned_tokens(window.tokens, tok.timestamp_begin) if t < tok.eot]
            if text and not is_silence(window, self.options.decode):
                start = prompt.index(tok.sot)
                rows.append(row)
                sequences.append([*prompt[start:start + n_start], tok.no_timestamps, *text, tok.eot])
        n = lockstep_rows(len(rows), self.generator.batch_multiple)
        if n == len(rows) == 0:
            return
        width = multihost.global_max(-(-max((len(s) for s in sequences), default=1) // 32) * 32)
        tokens = np.full((n, width), tok.eot, np.int32)
        lengths, frames = np.ones((n,), np.int32), np.full((n,), N_FRAMES, np.int32)
        for i, (row, seq) in enumerate(zip(rows, sequences)):
            tokens[i, :len(seq)], lengths[i], frames[i] = seq, len(seq), audio_frames[row]
        picked = pad_rows(mel[np.asarray(rows, np.int32)], n)
        aligned = self.generator.alignment(picked, tokens, lengths, frames, self.alignment_heads, tok.eot)
        matrix, probs = self.generator.fetch(aligned, n)
        for i, (row, seq) in enumerate(zip(rows, sequences)):
            n_text = len(seq) - n_start - 2
            windows[row].alignment = (np.asarray(matrix[i, n_start:len(seq) - 1, :max(frames[i] // 2, 1)]),
                                      [float(p) for p in probs[i, n_start:n_start + n_text]])
