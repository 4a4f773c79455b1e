"""Python API: a `Transcriber` holds a loaded model, its tokenizer and compiled programs.

`transcribe` / `transcribe_iter` take files of any length: audio is decoded on background
threads, every file is cut into 30 s windows (sequential seek loop or chunked with stride,
`longform.py`) and windows of many files share device batches (`scheduler.py`). Every input
ends as one record, an `error` record when it cannot be used. `decode_clips` is the plain
single-window decode of clips of up to 30 s (the reference's `whisper.decode`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from whisper_nnx.sharding import multihost, rules_for

from .alignment import default_alignment_heads
from . import records
from .audio import (
    CHUNK_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioDecodeError,
    AudioInput,
    input_name,
    load_audio,
    pad_or_trim,
)
from .decoding import DecodeOptions, WindowDecoder, bucket, initial_tokens, is_silence, lockstep_rows, pad_rows
from .features import WINDOW_SAMPLES, log_mel_spectrogram_jit, window_log_max, window_log_mel
from .generate import Generator
from .longform import (
    ChunkedFile,
    FileJob,
    LongFormOptions,
    SequentialFile,
    aligned_tokens,
    speech_chunks,
    stride_chunks,
)
from .model_hub import DEFAULT_MODEL, resolve_model
from .scheduler import AudioPrefetcher, LoadedInput, WindowScheduler, expected_windows
from .segments import split_segments
from .spool import SpeechView
from .tokenizer import LANGUAGES, Tokenizer
from .vad import SpeechMap, VadOptions, speech_regions_streaming
from .vad import check_available as check_vad_available
from .weights import load_model, read_checkpoint

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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




class Transcriber:
    """Load once, transcribe many: `Transcriber("tiny.en").transcribe(["a.wav", "b.flac"])`."""

    def __init__(self, model: str = DEFAULT_MODEL, dtype: str = "float32", mesh: Optional[Mesh] = None,
                 rules=None, allow_replicated: bool = False, quantize: Optional[str] = None):
        """`mesh` (see whisper_nnx.sharding.make_mesh) with logical-axis `rules` (a preset of
        whisper_nnx.sharding.PRESETS) shards weights, caches and batches; None: one device.
        `quantize="int8"` stores the matmul weights as int8 (see quantize.py: about 4x less
        weight memory at rest; not faster on CPU, where XLA dequantizes before the matmuls)."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.checkpoint_path = resolve_model(model)
        checkpoint = read_checkpoint(self.checkpoint_path)
        self.dims = checkpoint.dims
        self.model_name = model
        self.tokenizer = Tokenizer.from_file(checkpoint.directory / "tokenizer.json",
                                             n_vocab=self.dims.n_vocab)
        if mesh is not None and rules is None:
            rules = rules_for("dp+tp")
        self.mesh = mesh
        # Weights are stored in the compute dtype: a bfloat16 decode step then reads half the
        # bytes (it is bound by memory traffic: the 51k x D output table dominates).
        model_ = load_model(checkpoint, dtype=_DTYPES[dtype], param_dtype=_DTYPES[dtype], mesh=mesh,
                            rules=rules, allow_replicated=allow_replicated)
        if quantize:
            from .quantize import quantize_weights
            model_ = quantize_weights(model_, quantize)
        self.generator = Generator(model_, mesh=mesh, rules=rules)
        self.alignment_heads = tuple(tuple(h) for h in checkpoint.alignment_heads or ()) or \
            default_alignment_heads(self.dims.n_text_layer, self.dims.n_text_head)
        self.decoder = WindowDecoder(self.generator, self.dims)

    # --- pieces ---------------------------------------------------------------------------

    def mel(self, audio: np.ndarray) -> jax.Array:
        """A batch of up-to-30 s clips [B, N] -> log-mel [B, M, 3000]."""
        return log_mel_spectrogram_jit(jnp.asarray(audio), n_mels=self.dims.n_mels)

    def detect_languages(self, mel: jax.Array) -> list[tuple[str, dict[str, float]]]:
        """Per row of mel [B, M, N]: (best language code, probabilities of every language)."""
        tok = self.tokenizer
        n = mel.shape[0]
        padded = pad_rows(mel, lockstep_rows(n, self.generator.batch_multiple))
        probs = self.generator.fetch(self.generator.language_probs(padded, tok.sot, tuple(tok.all_language_tokens)),
                                     padded.shape[0])[:n]
        codes = tok.all_language_codes
        return [(codes[int(row.argmax())], {c: float(p) for c, p in zip(codes, row)}) for row in probs]

    # --- long-form transcription of files of any length -------------------------------------

    def transcribe(self, inputs: Sequence[AudioInput], options: TranscribeOptions = TranscribeOptions()
                   ) -> list[dict]:
        """One result record per input, in input order (see DESIGN.md's results.jsonl contract)."""
        results: list[Optional[dict]] = [None] * len(inputs)
        for index, record in self.transcribe_iter(inputs, options):
            results[index] = record
        return results  # type: ignore[return-value]

    def warn_ignored_options(self, options: TranscribeOptions) -> None:
        """As the reference's CLI: an English-only model ignores a language other than English
        and the translate task, with a warning rather than silently."""
        if self.tokenizer.multilingual:
            return
        if options.language is not None and options.language.lower() not in ("en", "english"):
            logging.warning("%s is an English-only model but was given language %r; using English instead",
                            self.model_name, options.language)
        if options.task == "translate":
            logging.warning("%s: an English-only model cannot translate; transcribing in English instead",
                            self.model_name)

    def transcribe_iter(self, inputs: Sequence[AudioInput], options: TranscribeOptions = TranscribeOptions()
                        ) -> Iterator[tuple[int, dict]]:
        """(input index, record) for every input, in the order files finish; audio is decoded
        on `options.audio_workers` threads while the device works."""
        self.warn_ignored_options(options)
        find_speech = None
        if options.vad:
            check_vad_available()  # once, before any record: not one error per file
            vad = VadOptions(threshold=options.vad_threshold, min_silence_duration_ms=options.vad_min_silence_ms,
                             # chunked: regions of at most one window, split at their longest pause
                             max_speech_duration_s=29.0 if options.long_form == "chunked" else float("inf"))
            find_speech = lambda audio: speech_regions_streaming(audio.pieces(), vad)
        files = AudioPrefetcher(inputs, workers=options.audio_workers, max_ahead=max(8, 2 * options.batch_size),
                                max_seconds=options.max_audio_in_memory_s / 2, spool_after_s=options.spool_after_s,
                                spool_dir=options.spool_dir, find_speech=find_speech)
        scheduler = WindowScheduler(
            make_jobs=lambda arrivals: self._make_jobs(arrivals, options),
            decode=lambda samples, content, top, prompts, seeds: self._decode_windows(samples, content, top,
                                                                                        prompts, seeds, options),
            batch_size=options.batch_size,
            windows_per_file=expected_windows(options.long_form, options.chunk_stride_s),
            max_admitted_s=options.max_audio_in_memory_s / 2)
        for index, record in scheduler.run(files):
            yield index, record

    def _make_jobs(self, arrivals: list[LoadedInput], options: TranscribeOptions
                   ) -> list[tuple[FileJob, Optional[str], Optional[dict]]]:
        """Frames each new file, finds its loudness maximum (the log-mel floor) and its
        language, and builds its long-form job. With voice activity, a sequential job decodes
        the speech put back to back (times mapped back at the end) and a chunked job gets
        chunks cut at pauses."""
        long_form = options.long_form_options
        chunked = long_form.mode == "chunked"
        audios, plans, maps = [], [], []
        for loaded in arrivals:
            speech = SpeechMap(loaded.speech) if loaded.speech is not None and not chunked else None
            # The speech of a sequential job is a view over the file's samples (no copy).
            audio = SpeechView(loaded.audio, loaded.speech) if speech is not None else loaded.audio
            audios.append(audio)
            maps.append(speech)
            if not chunked:
                plans.append(None)
            elif loaded.speech is not None:
                plans.append(speech_chunks(loaded.speech, audio.content_frames))
            else:
                plans.append(stride_chunks(audio.content_frames, long_form.chunk_stride_s))
        # Windows whose maxima are needed: the whole file (floor) and, chunked, each chunk.
        spans = []  # (file, first frame, frames)
        for f, audio in enumerate(audios):
            total = audio.content_frames + N_FRAMES
            spans += [(f, start, min(N_FRAMES, total - start)) for start in range(0, total, N_FRAMES)]
            spans += [(f, start, frames) for start, frames in plans[f] or ()]
        maxima = self._window_maxima(spans, audios)
        tops, chunk_tops, at = [], [], 0
        for f, audio in enumerate(audios):
            n_whole = -(-(audio.content_frames + N_FRAMES) // N_FRAMES)
            tops.append(float(maxima[at:at + n_whole].max()))
            n_chunks = len(plans[f] or ())
            chunk_tops.append([float(m) for m in maxima[at + n_whole:at + n_whole + n_chunks]])
            at += n_whole + n_chunks
        languages = self._file_languages(audios, tops, options)
        jobs = []
        for f, audio in enumerate(audios):
            language, probs = languages[f]
            tokenizer = self.tokenizer.with_language(language, options.task) if self.tokenizer.multilingual \
                else self.tokenizer
            args = (audio, tops[f], tokenizer, options, long_form, self.dims.n_text_ctx)
            job = ChunkedFile(*args, chunk_tops=chunk_tops[f], chunks=plans[f]) if chunked else SequentialFile(*args)
            if maps[f] is not None:
                job.restore = maps[f].restore
            jobs.append((job, language, probs))
        return jobs

    def _window_maxima(self, spans: list[tuple[int, int, int]], audios: list, group: int = 16) -> np.ndarray:
        """Max log10 mel power of each span (file, first frame, valid frames): [len(spans)].
        Windows are cut `group` at a time, so a long file never has all its windows in memory."""
        out = []
        for i in range(0, len(spans), group):
            part = spans[i:i + group]
            samples = np.zeros((group, WINDOW_SAMPLES), np.float32)
            counts = np.zeros((group,), np.int32)
            for row, (f, start, valid) in enumerate(part):
                samples[row], counts[row] = audios[f].window(start), valid
            out.append(np.asarray(window_log_max(samples, counts, n_mels=self.dims.n_mels))[:len(part)])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def _file_languages(self, audios: list, tops: list[float], options: TranscribeOptions
                        ) -> list[tuple[str, Optional[dict]]]:
        """Per file (language, probabilities or None): detected on the file's first 30 s as the
        reference does, unless the model is English-only or the options fix the language."""
        if not self.tokenizer.multilingual:
            return [("en", None)] * len(audios)
        if options.language is not None:
            return [(options.language, None)] * len(audios)
        # Every process makes the same detection calls (some with no rows).
        if multihost.global_max(len(audios)) == 0:
            return []
        samples = np.stack([a.window(0) for a in audios]) if audios else np.zeros((0, WINDOW_SAMPLES), np.float32)
        mel = self._window_mel(samples, np.full(len(audios), N_FRAMES, np.int32), np.asarray(tops, np.float32))
        found = self.detect_languages(mel)
        top5 = lambda probs: dict(sorted(probs.items(), key=lambda kv: -kv[1])[:5])
        return [(code, {k: round(v, 4) for k, v in top5(probs).items()}) for code, probs in found]

    def _window_mel(self, samples: np.ndarray, content: np.ndarray, top: np.ndarray) -> jax.Array:
        """Long-form windows: samples [B, WINDOW_SAMPLES] -> log-mel [B, M, 3000] (B bucketed)."""
        n = samples.shape[0]
        rows = bucket(max(n, 1))
        grown = np.zeros((rows, WINDOW_SAMPLES), np.float32)
        grown[:n] = samples
        counts, tops = np.full((rows,), N_FRAMES, np.int32), np.zeros((rows,), np.float32)
        counts[:n], tops[:n] = content, top
        return window_log_mel(grown, counts, tops, n_mels=self.dims.n_mels)[:n]

    def _decode_windows(self, samples: np.ndarray, content: np.ndarray, top: np.ndarray, prompts: list[list[int]],
                        seeds: list[int], options: TranscribeOptions) -> list:
        mel = self._window_mel(samples, content, top)[:len(prompts)]
        tokenizer = self.tokenizer.with_language(options.language or "en", options.task) \
            if self.tokenizer.multilingual else self.tokenizer
        windows = self.decoder.decode(mel, tokenizer, prompts, options, seeds=seeds)
        if options.word_timestamps:
            self._align_words(mel, windows, content[:len(prompts)], prompts, options)
        return windows

    def _align_words(self, mel: jax.Array, windows: list, frames: np.ndarray, prompts: list[list[int]],
                     options: TranscribeOptions) -> None:
        """Attach to each window the alignment matrix and token probabilities of the text the
        reference would align (the tokens of its segments), in one batched device call."""
        tok = self.tokenizer
        n_start = len(tok.sot_sequence)
        rows, sequences = [], []
        for row, (window, prompt) in enumerate(zip(windows, prompts)):
            text = [t for t in aligned_tokens(window.tokens, tok.timestamp_begin) if t < tok.eot]
            if text and not is_silence(window, options):
                start = prompt.index(tok.sot)
                rows.append(row)
                sequences.append([*prompt[start:start + n_start], tok.no_timestamps, *text, tok.eot])
        n = lockstep_rows(len(rows), self.generator.batch_multiple)
        if n == len(rows) == 0:
            return
        width = multihost.global_max(-(-max((len(s) for s in sequences), default=1) // 32) * 32)
        tokens = np.full((n, width), tok.eot, np.int32)
        lengths, counts = np.ones((n,), np.int32), np.full((n,), N_FRAMES, np.int32)
        for i, (row, seq) in enumerate(zip(rows, sequences)):
            tokens[i, :len(seq)], lengths[i], counts[i] = seq, len(seq), frames[row]
        picked = pad_rows(mel[np.asarray(rows, np.int32)], n)
        aligned = self.generator.alignment(picked, tokens, lengths, counts, self.alignment_heads, tok.eot)
        matrix, probs = self.generator.fetch(aligned, n)
        for i, (row, seq) in enumerate(zip(rows, sequences)):
            n_text = len(seq) - n_start - 2
            windows[row].alignment = (np.asarray(matrix[i, n_start:len(seq) - 1, :max(counts[i] // 2, 1)]),
                                      [float(p) for p in probs[i, n_start:n_start + n_text]])

    # --- single windows (clips of up to 30 s, as whisper.decode) ---------------------------

    def decode_clips(self, inputs: Sequence[AudioInput], options: TranscribeOptions = TranscribeOptions()
                     ) -> list[dict]:
        """One record per input clip of up to 30 s, each decoded as one window of its audio
        zero-padded to 30 s (the reference's `whisper.decode`); longer clips get an error."""
        self.warn_ignored_options(options)
        results: list[Optional[dict]] = [None] * len(inputs)
        good: list[tuple[int, np.ndarray]] = []
        for i, item in enumerate(inputs):
            try:
                audio = load_audio(item) if not isinstance(item, np.ndarray) else np.asarray(item, np.float32)
                if audio.shape[0] > N_SAMPLES:
                    raise AudioDecodeError(input_name(item), f"{audio.shape[0] / SAMPLE_RATE:.1f} s is longer "
                                           f"than one {CHUNK_LENGTH} s window: use transcribe")
                good.append((i, audio))
            except AudioDecodeError as err:
                results[i] = records.failure(input_name(item), str(err), records.INPUT)
        # With several processes every one runs the same number of batches (some may be empty).
        n_batches = multihost.global_max(-(-len(good) // options.batch_size))
        for b in range(n_batches):
            chunk = good[b * options.batch_size:(b + 1) * options.batch_size]
            for (i, audio), record in zip(chunk, self._transcribe_batch([a for _, a in chunk], options)):
                results[i] = records.transcript(input_name(inputs[i]), duration_s=audio.shape[0] / SAMPLE_RATE,
                                                windows=1, **record)
        return results  # type: ignore[return-value]

    def _transcribe_batch(self, clips: list[np.ndarray], options: TranscribeOptions) -> list[dict]:
        n = len(clips)
        padded = np.zeros((bucket(max(n, 1)), N_SAMPLES), np.float32)
        for row, clip in enumerate(clips):
            padded[row] = pad_or_trim(clip)
        mel = self.mel(padded)[:n]
        if self.tokenizer.multilingual and options.language is None:
            languages = [code for code, _ in self.detect_languages(mel)]
        else:
            languages = [options.language if self.tokenizer.multilingual else "en"] * n
        # Rows that share a language share a prompt and decode together; every process walks
        # the union of languages so their calls stay in lockstep.
        codes = self.tokenizer.all_language_codes if self.tokenizer.multilingual else ("en",)
        out: list[Optional[dict]] = [None] * n
        for language in (codes[i] for i in multihost.global_union([codes.index(c) for c in languages])):
            rows = [r for r in range(n) if languages[r] == language]
            tokenizer = self.tokenizer.with_language(language, options.task) if self.tokenizer.multilingual \
                else self.tokenizer
            prompt = initial_tokens(tokenizer, options, self.dims.n_text_ctx)
            windows = self.decoder.decode(mel[np.asarray(rows, dtype=np.int32)], tokenizer, prompt, options)
            for r, window in zip(rows, windows):
                duration = clips[r].shape[0] / SAMPLE_RATE
                silent = is_silence(window, options)
                out[r] = {
                    "text": "" if silent else window.text, "language": language,
                    "segments": [] if silent else
                    [s.to_json() for s in split_segments(window.tokens, tokenizer, 0.0, duration)],
                    "avg_logprob": window.avg_logprob, "no_speech_prob": window.no_speech_prob,
                    "compression_ratio": window.compression_ratio, "temperature": window.temperature,
                    "tokens": window.tokens}
        return out  # type: ignore[return-value]


def transcribe(inputs: Iterable[AudioInput], model: str = DEFAULT_MODEL, **options) -> list[dict]:
    """One-shot convenience: load `model`, transcribe `inputs`, return the records."""
    return Transcriber(model).transcribe(list(inputs), TranscribeOptions(**options))


__all__ = ["LANGUAGES", "TranscribeOptions", "Transcriber", "transcribe"]
