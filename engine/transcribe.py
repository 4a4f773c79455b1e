"""Python API: a `Transcriber` holds a loaded model, its tokenizer and compiled programs.

This stage handles audio of up to 30 s per input (one window); longer inputs are reported as
errors in their records until long-form decoding lands. Inputs are decoded on the host, padded
into fixed-size batches (one compiled program per batch size bucket) and decoded on device.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from .audio import CHUNK_LENGTH, N_SAMPLES, SAMPLE_RATE, AudioDecodeError, load_audio, pad_or_trim
from .features import log_mel_spectrogram_jit
from .generate import Generator, SamplingConfig
from .logit_rules import LogitRules
from .model_hub import DEFAULT_MODEL, resolve_model
from .segments import compression_ratio, split_segments
from .tokenizer import LANGUAGES, Tokenizer
from .weights import load_model, read_checkpoint

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TranscribeOptions:
    """What to decode and how (the reference's `DecodingOptions`, the subset implemented)."""

    language: Optional[str] = None  # None: detect per input (multilingual models)
    task: str = "transcribe"  # or "translate" (multilingual models)
    temperature: float = 0.0
    sample_len: int = 224  # max sampled tokens per window
    without_timestamps: bool = False
    suppress_blank: bool = True
    suppress_tokens: str = "-1"  # comma-separated ids; "-1" = the non-speech set
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be transcribe or translate, got {self.task!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


AudioInput = Union[str, Path, np.ndarray]


def _bucket(n: int) -> int:
    """Next power of two >= n: few batch shapes, few compilations."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


class Transcriber:
    """Load once, transcribe many: `Transcriber("tiny.en").transcribe(["a.wav", "b.flac"])`."""

    def __init__(self, model: str = DEFAULT_MODEL, dtype: str = "float32"):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.checkpoint_path = resolve_model(model)
        checkpoint = read_checkpoint(self.checkpoint_path)
        self.dims = checkpoint.dims
        self.model_name = model
        self.tokenizer = Tokenizer.from_file(checkpoint.directory / "tokenizer.json",
                                             n_vocab=self.dims.n_vocab)
        self.generator = Generator(load_model(checkpoint, dtype=_DTYPES[dtype]))

    # --- pieces ---------------------------------------------------------------------------

    def _suppress_ids(self, tokenizer: Tokenizer, spec: str) -> tuple[int, ...]:
        ids = {int(t) for t in spec.split(",") if t.strip()} if spec else set()
        if -1 in ids:
            ids.discard(-1)
            ids.update(tokenizer.non_speech_tokens)
        ids.update({tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
                    tokenizer.sot_lm, tokenizer.no_speech})
        return tuple(sorted(i for i in ids if 0 <= i < self.dims.n_vocab))

    def _config(self, tokenizer: Tokenizer, prompt_len: int, options: TranscribeOptions) -> SamplingConfig:
        rules = LogitRules(
            sample_begin=prompt_len, eot=tokenizer.eot, no_timestamps=tokenizer.no_timestamps,
            timestamp_begin=None if options.without_timestamps else tokenizer.timestamp_begin,
            blank_ids=tuple(tokenizer.encode(" ")) + (tokenizer.eot,) if options.suppress_blank else (),
            suppress_ids=self._suppress_ids(tokenizer, options.suppress_tokens))
        sample_len = min(options.sample_len, self.dims.n_text_ctx - prompt_len)
        return SamplingConfig(rules=rules, sample_len=sample_len, temperature=options.temperature,
                              sot_index=0, no_speech=tokenizer.no_speech)

    def mel(self, audio: np.ndarray) -> jax.Array:
        """A batch of up-to-30 s clips [B, N] -> log-mel [B, M, 3000]."""
        return log_mel_spectrogram_jit(jnp.asarray(audio), n_mels=self.dims.n_mels)

    def detect_languages(self, mel: jax.Array) -> list[tuple[str, dict[str, float]]]:
        """Per row of mel [B, M, N]: (best language code, probabilities of every language)."""
        tok = self.tokenizer
        probs = np.asarray(self.generator.language_probs(mel, tok.sot, tuple(tok.all_language_tokens)))
        codes = tok.all_language_codes
        return [(codes[int(row.argmax())], {c: float(p) for c, p in zip(codes, row)}) for row in probs]

    # --- entry point ----------------------------------------------------------------------

    def transcribe(self, inputs: Sequence[AudioInput], options: TranscribeOptions = TranscribeOptions()
                   ) -> list[dict]:
        """One result record per input, in order (see DESIGN.md's results.jsonl contract)."""
        results: list[Optional[dict]] = [None] * len(inputs)
        good: list[tuple[int, np.ndarray]] = []
        for i, item in enumerate(inputs):
            try:
                audio = load_audio(item) if not isinstance(item, np.ndarray) else np.asarray(item, np.float32)
                if audio.shape[0] > N_SAMPLES:
                    raise AudioDecodeError(_name(item), f"{audio.shape[0] / SAMPLE_RATE:.1f} s is longer "
                                           f"than one {CHUNK_LENGTH} s window; long-form decoding is "
                                           "not available yet")
                good.append((i, audio))
            except AudioDecodeError as err:
                results[i] = _record(item, error=str(err))
        for start in range(0, len(good), options.batch_size):
            chunk = good[start:start + options.batch_size]
            for (i, audio), record in zip(chunk, self._transcribe_batch([a for _, a in chunk], options)):
                results[i] = {**_record(inputs[i], duration_s=audio.shape[0] / SAMPLE_RATE), **record}
        return results  # type: ignore[return-value]

    def _transcribe_batch(self, clips: list[np.ndarray], options: TranscribeOptions) -> list[dict]:
        n = len(clips)
        padded = np.zeros((_bucket(n), N_SAMPLES), np.float32)
        for row, clip in enumerate(clips):
            padded[row] = pad_or_trim(clip)
        mel = self.mel(padded)
        if self.tokenizer.multilingual and options.language is None:
            languages = [code for code, _ in self.detect_languages(mel)[:n]]
        else:
            languages = [options.language if self.tokenizer.multilingual else "en"] * n
        # Rows that share a language share a prompt and decode together.
        records: list[Optional[dict]] = [None] * n
        for language in sorted(set(languages)):
            rows = [r for r in range(n) if languages[r] == language]
            tokenizer = self.tokenizer.with_language(language, options.task) if self.tokenizer.multilingual \
                else self.tokenizer
            prompt = list(tokenizer.sot_sequence_including_notimestamps if options.without_timestamps
                          else tokenizer.sot_sequence)
            config = self._config(tokenizer, len(prompt), options)
            rows_mel = mel[np.asarray(rows + [rows[0]] * (_bucket(len(rows)) - len(rows)))]
            prompts = jnp.asarray(np.tile(np.asarray(prompt, np.int32), (rows_mel.shape[0], 1)))
            result = jax.device_get(self.generator.generate(rows_mel, prompts, config))
            for k, r in enumerate(rows):
                records[r] = self._finish(tokenizer, result.tokens[k, len(prompt):],
                                          float(result.sum_logprobs[k]), float(result.no_speech_prob[k]),
                                          clips[r].shape[0] / SAMPLE_RATE, language)
        return records  # type: ignore[return-value]

    def _finish(self, tokenizer: Tokenizer, sampled: np.ndarray, sum_logprob: float,
                no_speech_prob: float, duration: float, language: str) -> dict:
        sampled = sampled.tolist()
        tokens = sampled[:sampled.index(tokenizer.eot)] if tokenizer.eot in sampled else sampled
        text = tokenizer.decode(tokens).strip()
        segments = split_segments(tokens, tokenizer, 0.0, duration)
        return {"text": text, "language": language,
                "segments": [s.to_json() for s in segments],
                "avg_logprob": sum_logprob / (len(tokens) + 1),
                "no_speech_prob": no_speech_prob, "compression_ratio": compression_ratio(text),
                "tokens": tokens}


def _name(item: AudioInput) -> str:
    return "<array>" if isinstance(item, np.ndarray) else str(item)


def _record(item: AudioInput, *, duration_s: Optional[float] = None, error: Optional[str] = None) -> dict:
    return {"path": _name(item), "text": "", "language": None, "duration_s": duration_s,
            "segments": [], "error": error}


def transcribe(inputs: Iterable[AudioInput], model: str = DEFAULT_MODEL, **options) -> list[dict]:
    """One-shot convenience: load `model`, transcribe `inputs`, return the records."""
    return Transcriber(model).transcribe(list(inputs), TranscribeOptions(**options))


__all__ = ["LANGUAGES", "TranscribeOptions", "Transcriber", "transcribe"]
