"""Per-file long-form state machines: which 30 s windows a file needs, with which prompt, and
how decoded windows become the file's segments.

Two modes, chosen per run:

- `SequentialFile`: the reference's seek loop (`whisper.transcribe`). One window at a time; the
  next window starts at the last complete timestamp pair (or after the window), and each
  window is prompted with the text decoded so far (condition on previous text, reset after a
  temperature > 0.5). Different files advance their own seek side by side in one batch.
- `ChunkedFile`: every window is known up front (30 s, a stride of 5 s each side by default),
  all of them decode in parallel, and the chunks' words are stitched across the overlaps
  (`stitching.py`).

A job hands out `WindowRequest`s and takes back `DecodedWindow`s; the scheduler decides which
requests of which files share a device batch. Times are seconds from the start of the file.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

from . import records
from .audio import CHUNK_LENGTH, FRAMES_PER_SECOND, FRAMES_PER_TIMESTAMP, HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from .decode.options import DecodeOptions
from .decode.prompts import initial_tokens
from .decode.tokenizer import Tokenizer
from .decode.window_decoder import DecodedWindow, is_silence, needs_fallback
from .hallucination import noise_reason, skip_hallucinations, suspect_reason, words_end
from .segments import Segment, cut_at, single_ending, split_segments
from .spans import Span, intersect_spans, seek_clips, split_at_pause
from .spool import Windowed
from .stitching import stitch_chunks
from .words import assign_words, word_timings

# A file (or chunk) whose loudest mel bin is below this log10 power holds no signal at all
# (digital silence, or noise around -100 dBFS): it is an empty transcript without decoding.
SILENT_LOG_POWER = -9.0
# A text-only voice chunk with at least this much speech whose text has fewer tokens than this
# per second of speech ended early (speech runs at 2-4 tokens a second): it is decoded again in
# two halves cut at its longest pause (a 29 s chunk of 2.5 words a second read as 14 words).
RESPLIT_MIN_SPEECH_S = 8.0
RESPLIT_TOKENS_PER_SPEECH_S = 1.0


@dataclasses.dataclass(frozen=True)
class LongFormOptions:
    """How files longer than one window are cut (DecodeOptions say how windows decode)."""

    mode: str = "sequential"  # or "chunked"
    condition_on_previous_text: bool = True  # sequential: prompt each window with the text so far
    initial_prompt: Optional[str] = None  # text before the first window (names, spelling, style)
    carry_initial_prompt: bool = False  # sequential: keep the initial prompt in every window's prompt
    chunk_stride_s: float = 5.0  # chunked: overlap kept on each side of a chunk's interior
    word_timestamps: bool = False  # words with times in each segment
    # sequential: only these spans, as the reference's clip_timestamps: "start,end,start,end,..."
    # seconds (a last start without an end runs to the end of the file); None: the whole file
    clip_timestamps: Optional[tuple[float, ...]] = None
    # sequential, with word timestamps: drop a likely hallucination between silences longer than
    # this (seconds) and skip the silence around it (the reference's option); None: off
    hallucination_silence_threshold: Optional[float] = None
    # drop segments that match known hallucination patterns (hallucination.suspect_reason) from
    # the text, keeping them in the record's `dropped_segments` with the reason; off by default
    hallucination_filter: bool = False
    # files longer than one window: stretches without speech (Silero voice activity) of at least
    # this many seconds are not decoded (speech_spans); a window after a whole window's worth of
    # skipped audio is prompted afresh. None: every window is decoded, as the reference does
    skip_non_speech_s: Optional[float] = 5.0

    def __post_init__(self) -> None:
        if self.mode not in ("sequential", "chunked"):
            raise ValueError(f"long-form mode must be sequential or chunked, got {self.mode!r}")
        if isinstance(self.clip_timestamps, str):  # the reference's and the CLI's spelling
            text = self.clip_timestamps.strip()
            object.__setattr__(self, "clip_timestamps", tuple(float(t) for t in text.split(",")) if text else ())
        elif self.clip_timestamps is not None:
            object.__setattr__(self, "clip_timestamps", tuple(float(t) for t in self.clip_timestamps))
        if self.clip_timestamps is not None:
            if self.mode != "sequential":
                raise ValueError("clip_timestamps applies to sequential long-form (the reference's seek loop)")
            if any(t < 0 for t in self.clip_timestamps):
                raise ValueError(f"clip_timestamps must be >= 0 seconds, got {self.clip_timestamps}")
        if self.hallucination_silence_threshold is not None:
            if self.mode != "sequential" or not self.word_timestamps:
                raise ValueError("hallucination_silence_threshold needs sequential long-form with word timestamps "
                                 "(as in the reference)")
            if self.hallucination_silence_threshold < 0:
                raise ValueError("hallucination_silence_threshold must be >= 0 seconds")
        if self.skip_non_speech_s is not None and not self.skip_non_speech_s >= 0:
            raise ValueError(f"skip_non_speech_s must be >= 0 seconds or None, got {self.skip_non_speech_s}")
        if not 0 <= self.chunk_stride_s < CHUNK_LENGTH / 2:
            raise ValueError(f"chunk stride must be in [0, {CHUNK_LENGTH / 2}) s, got {self.chunk_stride_s}")


@dataclasses.dataclass
class WindowRequest:
    """One window a file needs decoded: where it starts, how much of it is file, its prompt.
    Its samples are cut from the file only when its batch is formed (a long chunked file has
    hundreds of requests waiting)."""

    job: "FileJob"
    chunk: Optional[int]  # the chunk's number in a chunked file (None in a sequential one)
    frame: int  # first mel frame of the window in the file
    audio_frames: int  # frames of the window that hold the file (the rest decode as mel zeros)
    log_mel_max: float  # the file's (or chunk's) max log10 mel power: the -8 floor is taken from it
    prompt: list[int]  # [<|startofprev|> ...] + start sequence (+ prefix)
    detect_language: bool = False  # language per window: detected on this window, its prompt set to it


class PreparedFile(NamedTuple):
    """A file ready to decode (`scheduler.WindowWork.prepare`): its job and its language."""

    job: "FileJob"
    language: Optional[str]  # the file's language (None: not known)
    language_probs: Optional[dict[str, float]]  # the detection's top languages (None: not detected)


def _attach_words(segments: list[Segment], window: DecodedWindow, tokenizer: Tokenizer, offset: float,
                  last_speech: float) -> None:
    """Timed words of a window (its alignment) into its segments, edges moved onto them."""
    eot = tokenizer.eot
    matrix, probs = window.alignment
    text = [t for s in segments for t in s.tokens if t < eot]
    words, _ = assign_words(segments, word_timings(matrix, text, probs, tokenizer), eot, offset, last_speech)
    for segment, segment_words in zip(segments, words):
        segment.words = segment_words


class FileJob:
    """What every long-form job shares: the file, its language, its decoded segments."""

    def __init__(self, audio: Windowed, log_mel_max: float, tokenizer: Tokenizer, options: DecodeOptions,
                 long_form: LongFormOptions, n_text_ctx: int, file_time: Optional[Callable] = None):
        """`audio`: the samples the job decodes (`spool.Windowed`); `log_mel_max`: their maximum
        log10 mel power (the -8 floor); `n_text_ctx`: the model's text context. `file_time`:
        decoded time -> the file's time, where the job decodes a view of the file (its speech,
        under voice activity); None: the job decodes the file itself."""
        self.audio, self.log_mel_max, self.tokenizer = audio, log_mel_max, tokenizer
        self.options, self.long_form, self.n_text_ctx = options, long_form, n_text_ctx
        self.segments: list[Segment] = []
        self.windows_decoded = 0
        self.silent = log_mel_max < SILENT_LOG_POWER or audio.n_samples == 0
        self.file_time = file_time
        prompt = long_form.initial_prompt  # its tokens lead the prompts (as previous text)
        self.initial: list[int] = tokenizer.encode(" " + prompt.strip()) if prompt else []

    def start_prompt(self, previous: list[int], first: bool) -> list[int]:
        """The prompt of a window; a prefix applies to the file's first window only (as in
        faster-whisper: the reference's transcribe would force it onto every window)."""
        return initial_tokens(self.tokenizer, self.options, self.n_text_ctx, prompt=previous or None,
                              prefix=self.options.prompts.prefix if first else None)

    def requests(self) -> list[WindowRequest]:
        raise NotImplementedError

    def accept(self, request: WindowRequest, window: DecodedWindow) -> None:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def drop_reason(self, segment: Segment) -> Optional[str]:
        """Why `segment` is left out of the text (None: it is kept): punctuation only over a
        window that is likely non-speech (always), or, with the hallucination filter, a known
        hallucination pattern (`hallucination.suspect_reason`)."""
        fallback = self.options.fallback
        reason = noise_reason(segment, fallback.no_speech_threshold)
        if reason is None and self.long_form.hallucination_filter:
            reason = suspect_reason(segment, fallback.logprob_threshold, fallback.no_speech_threshold,
                                    fallback.compression_ratio_threshold)
        return reason

    def result(self, path: str, *, language: Optional[str], duration_s: Optional[float],
               **extra) -> records.Transcript:
        """The file's record, named `path`: text, segments (with the stats of the window each came
        from), the tokens of the segments kept; `extra`: keys the caller adds (language_probs).
        Segments `drop_reason` names go to `dropped_segments` (with their reason) instead of the
        text; `unlikely_segments` counts the segments kept whose text was unlikely at every
        fallback temperature (each marked `"unlikely": true`)."""
        segments = [s for s in self.segments if s.text.strip()]
        reasons = [self.drop_reason(s) for s in segments]
        dropped = [(s, r) for s, r in zip(segments, reasons) if r is not None]
        segments = [s for s, r in zip(segments, reasons) if r is None]
        every = [*segments, *(d for d, _ in dropped)]
        for s in every:  # a last timestamp may point past the end of the audio
            s.end = min(s.end, self.audio.duration) if self.file_time is None else s.end
            s.start = min(s.start, s.end)
        if self.file_time is not None:
            for s in every:
                s.start, s.end = self.file_time(s.start), self.file_time(s.end, is_end=True)
                for w in s.words:
                    w["start"] = round(self.file_time(w["start"]), 2)
                    w["end"] = round(self.file_time(w["end"], True), 2)
        if self.long_form.hallucination_filter or dropped:
            extra["dropped_segments"] = [{**s.to_json(), "dropped": reason} for s, reason in dropped]
        extra["unlikely_segments"] = sum(bool(s.stats.get("unlikely")) for s in segments)
        return records.transcript(path, text="".join(s.text for s in segments).strip(), language=language,
                                  duration_s=duration_s, segments=[s.to_json() for s in segments],
                                  windows=self.windows_decoded, tokens=[t for s in segments for t in s.tokens],
                                  **extra)


def _window_segments(window: DecodedWindow, tokenizer: Tokenizer, offset: float, duration: float,
                     options: DecodeOptions) -> list[Segment]:
    """A decoded window's segments, each with the window's stats. `unlikely`: the window is the
    decoder's last temperature and still fails the fallback thresholds (an earlier temperature
    that passed would have been kept), so its text is improbable or repetitive at every
    temperature tried: German through an English-only model, say."""
    segments = split_segments(window.tokens, tokenizer, offset, duration)
    unlikely = needs_fallback(window, options)
    for s in segments:
        s.stats = {"avg_logprob": window.avg_logprob, "compression_ratio": window.compression_ratio,
                   "no_speech_prob": window.no_speech_prob, "temperature": window.temperature,
                   "unlikely": unlikely}
    return segments


class SequentialFile(FileJob):
    """The reference's seek loop over one file, inside its spans of speech when they are given."""

    def __init__(self, audio: Windowed, log_mel_max: float, tokenizer: Tokenizer, options: DecodeOptions,
                 long_form: LongFormOptions, n_text_ctx: int, file_time: Optional[Callable] = None, *,
                 speech_spans: Optional[list[Span]] = None, language_per_window: bool = False):
        """FileJob's arguments, and `speech_spans`: the stretches to decode (`spans.speech_spans`);
        None: the whole file. The reference's clip_timestamps apply within them.
        `language_per_window`: each window asks for its language to be detected on it."""
        super().__init__(audio, log_mel_max, tokenizer, options, long_form, n_text_ctx, file_time)
        self.clips = seek_clips(self.long_form.clip_timestamps, self.audio.audio_frames)
        if speech_spans is not None:
            self.clips = intersect_spans(self.clips, speech_spans)
        self.clip = 0  # the clip being decoded
        self.seek = 0  # _enter_clip moves it to the first clip's start
        self.requested = 0
        self.language_per_window = language_per_window
        self.all_tokens = list(self.initial)
        self.prompt_reset_since = 0
        self.forget_after_gaps = speech_spans is not None
        self._enter_clip()
        self.last_speech = 0.0  # end of the last word heard (word timestamps)
        self.waiting = False  # a request is out

    def _enter_clip(self) -> None:
        """Move `seek` into the current clip, or on to the next clip once this one is done
        (the reference's loop over `seek_clips`). With spans of speech, a jump over a whole
        window's worth of audio starts the prompt afresh (no text from before the gap)."""
        while self.clip < len(self.clips):
            start, end = self.clips[self.clip]
            self.seek = max(self.seek, start)
            if self.seek < end:
                return
            self.clip += 1
            if self.clip < len(self.clips):
                if self.forget_after_gaps and self.clips[self.clip].first - self.seek >= N_FRAMES:
                    self.prompt_reset_since = len(self.all_tokens)
                self.seek = self.clips[self.clip].first

    @property
    def done(self) -> bool:
        return self.silent or self.clip >= len(self.clips)

    def _previous(self) -> list[int]:
        if self.long_form.carry_initial_prompt:
            room = self.n_text_ctx // 2 - 1 - len(self.initial)
            kept = self.all_tokens[max(len(self.initial), self.prompt_reset_since):]
            return self.initial + (kept[-room:] if room > 0 else [])
        return self.all_tokens[self.prompt_reset_since:]

    def requests(self) -> list[WindowRequest]:
        if self.done or self.waiting:
            return []
        self.waiting = True
        audio_frames = min(N_FRAMES, self.audio.audio_frames - self.seek, self.clips[self.clip].end - self.seek)
        self.requested += 1
        return [WindowRequest(self, None, self.seek, audio_frames, self.log_mel_max,
                              self.start_prompt(self._previous(), first=self.requested == 1),
                              detect_language=self.language_per_window)]

    def accept(self, request: WindowRequest, window: DecodedWindow) -> None:
        self.waiting = False
        self.windows_decoded += 1
        segment_size = request.audio_frames
        if is_silence(window, self.options):
            self.seek += segment_size
            self._enter_clip()
            return
        offset = self.seek * HOP_LENGTH / SAMPLE_RATE
        tokens, ts_begin = window.tokens, self.tokenizer.timestamp_begin
        segments = _window_segments(window, self.tokenizer, offset, segment_size / FRAMES_PER_SECOND, self.options)
        for s in segments:
            s.language = window.language
        cut = cut_at(tokens, ts_begin)
        if cut is not None:
            # Resume at the last complete timestamp pair: the text after it is decoded again.
            self.seek += (tokens[cut - 1] - ts_begin) * FRAMES_PER_TIMESTAMP
        else:
            self.seek += segment_size
        if self.long_form.word_timestamps and window.alignment is not None and segments:
            heard_before, single = self.last_speech, single_ending(tokens, ts_begin)
            self._add_words(segments, window, offset, single)
            threshold = self.long_form.hallucination_silence_threshold
            if threshold is not None:
                self.seek, checked = skip_hallucinations(
                    segments, threshold=threshold, seek=self.seek, window_frame=request.frame,
                    segment_frames=segment_size, single_ending=single,
                    last_speech=heard_before, content_frames=self.audio.audio_frames)
                if checked is None:  # a leading hallucination: the window is skipped altogether
                    self.last_speech = heard_before
                    self._enter_clip()
                    return
                segments = checked
                end = words_end(segments)
                self.last_speech = heard_before if end is None else end
        kept = [s for s in segments if s.start != s.end and s.text.strip()]
        self.segments += kept
        self.all_tokens += [t for s in kept for t in s.tokens]
        if not self.long_form.condition_on_previous_text or window.temperature > 0.5:
            self.prompt_reset_since = len(self.all_tokens)
        self._enter_clip()


    def _add_words(self, segments: list[Segment], window: DecodedWindow, offset: float, single_ending: bool) -> None:
        """Words with times into `segments` (moving their edges onto the words, as the
        reference does); without a single timestamp at its end, the next window starts at the
        end of the last word."""
        _attach_words(segments, window, self.tokenizer, offset, self.last_speech)
        last_word_end = words_end(segments)
        if last_word_end is None:  # no words: the last segment's end
            last_word_end = segments[-1].end
        if not single_ending and last_word_end > offset:
            self.seek = round(last_word_end * FRAMES_PER_SECOND)
        self.last_speech = last_word_end


class ChunkedFile(FileJob):
    """30 s chunks decoded in parallel and stitched at the end: overlapping by the stride, or
    cut at pauses by voice activity (no overlap).

    A chunk whose decode stops at a timestamp pair before its end (the reference would seek
    there) continues from that pair in another window when nothing else covers the rest: in
    the last chunk, in chunks cut at pauses, and where a gap before the next chunk is left.
    """

    def __init__(self, audio: Windowed, log_mel_max: float, tokenizer: Tokenizer, options: DecodeOptions,
                 long_form: LongFormOptions, n_text_ctx: int, file_time: Optional[Callable] = None, *,
                 chunks: list[Span], chunk_log_mel_max: list[float], speech: Optional[list[Span]] = None):
        """FileJob's arguments, and `chunks`: the chunks' spans (`spans.stride_chunks`, or
        `spans.speech_chunks` when voice activity chose them); `chunk_log_mel_max`: each chunk's
        maximum log10 mel power; `speech`: the voice-activity spans the chunks were cut from
        (given: a text-only chunk whose text is far too short for its speech is decoded again
        in two halves, `RESPLIT_*`)."""
        super().__init__(audio, log_mel_max, tokenizer, options, long_form, n_text_ctx, file_time)
        self.chunks, self.speech = list(chunks), speech
        self.chunk_log_mel_max = list(chunk_log_mel_max)
        self.replaced: set[int] = set()  # chunks decoded again in halves (appended to `chunks`)
        self.decoded: dict[int, list[Segment]] = {}
        self.open: set[int] = set()  # chunks with a window still to decode
        self.waiting: list[WindowRequest] = []
        for k in range(len(chunks)):
            self._open_chunk(k, hear=not (self.chunk_log_mel_max[k] < SILENT_LOG_POWER or self.silent))
        self._finish_if_done()

    def _open_chunk(self, k: int, hear: bool = True) -> None:
        """Chunk k's first window waits to be decoded (`hear` False: nothing to hear, no decode)."""
        self.decoded[k] = []
        if hear:
            self.open.add(k)
            chunk = self.chunks[k]
            self.waiting.append(WindowRequest(self, k, chunk.first, chunk.frames, self.chunk_log_mel_max[k],
                                              self.start_prompt(self.initial, first=chunk.first == self.chunks[0].first)))

    def requests(self) -> list[WindowRequest]:
        out, self.waiting = self.waiting, []
        return out

    def _covered_until(self, k: int) -> int:
        """Frame up to which chunk k must transcribe itself."""
        end = self.chunks[k].end
        if k + 1 < len(self.chunks) and self.chunks[k + 1].first < end:
            return self.chunks[k + 1].first  # the next chunk overlaps: it takes over from its start
        return end

    def accept(self, request: WindowRequest, window: DecodedWindow) -> None:
        self.windows_decoded += 1
        k, ts_begin = request.chunk, self.tokenizer.timestamp_begin
        if not is_silence(window, self.options):
            offset = request.frame / FRAMES_PER_SECOND
            segments = _window_segments(window, self.tokenizer, offset, request.audio_frames / FRAMES_PER_SECOND,
                                        self.options)
            if self.long_form.word_timestamps and window.alignment is not None and segments:
                _attach_words(segments, window, self.tokenizer, offset, 0.0)
            self.decoded[k] += segments
            if self._ended_early(k, window):
                self._decode_in_halves(k)
                return
            cut = cut_at(window.tokens, ts_begin)
            if cut is not None:
                resume = request.frame + (window.tokens[cut - 1] - ts_begin) * FRAMES_PER_TIMESTAMP
                if request.frame < resume < self._covered_until(k):
                    self.waiting.append(WindowRequest(self, k, resume, min(N_FRAMES, self.chunks[k].end - resume),
                                                      self.chunk_log_mel_max[k], self._next_prompt(k, window)))
                    return
        self.open.discard(k)
        self._finish_if_done()

    def _ended_early(self, k: int, window: DecodedWindow) -> bool:
        """Whether chunk k's text-only window has far fewer tokens than its speech holds."""
        if self.speech is None or not self.options.rules.without_timestamps:
            return False
        speech_s = sum(s.frames for s in intersect_spans([self.chunks[k]], self.speech)) / FRAMES_PER_SECOND
        text = [t for t in window.tokens if t < self.tokenizer.eot]
        return speech_s >= RESPLIT_MIN_SPEECH_S and len(text) < RESPLIT_TOKENS_PER_SPEECH_S * speech_s

    def _decode_in_halves(self, k: int) -> None:
        """Replace chunk k by its halves (cut at its longest pause), each decoded from scratch."""
        self.replaced.add(k)
        self.decoded[k] = []
        for half in split_at_pause(self.chunks[k], self.speech or []):
            self.chunks.append(half)
            self.chunk_log_mel_max.append(self.chunk_log_mel_max[k])
            self._open_chunk(len(self.chunks) - 1)
        self.open.discard(k)

    def _next_prompt(self, k: int, window: DecodedWindow) -> list[int]:
        """The prompt of chunk k's next window: the chunk's text so far after the initial prompt,
        as the seek loop prompts its next window (none after a window decoded at a temperature
        over 0.5, or without condition_on_previous_text)."""
        if not self.long_form.condition_on_previous_text or window.temperature > 0.5:
            return self.start_prompt(self.initial, first=False)
        text = [t for s in self.decoded[k] for t in s.tokens]
        return self.start_prompt(self.initial + text, first=False)

    def _finish_if_done(self) -> None:
        if not self.open:
            kept = sorted((k for k in range(len(self.chunks)) if k not in self.replaced), key=lambda k: self.chunks[k])
            bounds = [(self.chunks[k].first / FRAMES_PER_SECOND, self.chunks[k].end / FRAMES_PER_SECOND) for k in kept]
            self.segments = stitch_chunks([self.decoded[k] for k in kept], bounds, self.tokenizer)

    @property
    def done(self) -> bool:
        return not self.open
