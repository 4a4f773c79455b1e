"""Decoding strategies: how a window's tokens are chosen, as frozen, hashable objects.

A strategy is a static argument of the jitted programs (one compiled program per strategy
value, shape and `DecodeConfig`), and the one seam for a new way of decoding. It says
  - `copies`: device rows per window (best-of sampling decodes each window several times);
  - `run(...)`: the traced program from audio features to a device result;
  - `candidates(...)`: on the host, each window's (tokens, summed log-probability) hypotheses,
    which `WindowDecoder` ranks with the reference's length-normalized score.
Strategies that pick one token per row and step (greedy, sampling; top-p or top-k would join
them) subclass `TokenStrategy` and only write `choose`: they share `programs`' loop, which the
runner (`generate.Generator`) may stop between stretches to drop finished rows (`shrinkable`).
Beam search keeps its own loop. The temperature is a traced argument, not a field, so every
temperature of the fallback shares one compiled program.
Shapes: B rows, V vocabulary, L token buffer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Protocol

import jax
import jax.numpy as jnp

from ..model.whisper import Whisper
from .programs import BeamResult, DecodeConfig, DecodeResult, RowSpec, beam_search_from_features, sample_from_features
from .search import finalize_beams, sampled_tokens

Candidates = list[tuple[list[int], float]]  # one window's hypotheses: (sampled tokens, sum of log-probs)


class Strategy(Protocol):
    """What the runner and `WindowDecoder` need of a decoding strategy (frozen, hashable)."""

    copies: int  # device rows per window
    shrinkable: ClassVar[bool]  # True: the runner may decode in stretches, dropping finished rows

    def run(self, model: Whisper, config: DecodeConfig, features: jax.Array, prompt: jax.Array, rng: jax.Array,
            temperature: jax.Array, rows: Optional[RowSpec]) -> Any:
        """features [B, S, D], prompt [B, P] -> a device result with `no_speech_prob` [B] (traceable)."""

    def candidates(self, result: Any, n: int, sample_begin: int, eot: int) -> list[Candidates]:
        """Host result of `run` over n windows x `copies` rows -> each window's hypotheses."""


@dataclasses.dataclass(frozen=True)
class TokenStrategy:
    """A strategy that picks one token per row and step in the shared loop (`choose`)."""

    shrinkable: ClassVar[bool] = True

    @property
    def copies(self) -> int:
        return 1

    def choose(self, logits: jax.Array, temperature: jax.Array, key: jax.Array, seeds: jax.Array) -> jax.Array:
        """Filtered logits [B, V] -> next tokens [B]; `key` is this step's, `seeds` [B] each row's stream."""
        raise NotImplementedError

    def run(self, model: Whisper, config: DecodeConfig, features: jax.Array, prompt: jax.Array, rng: jax.Array,
            temperature: jax.Array, rows: Optional[RowSpec]) -> DecodeResult:
        return sample_from_features(model, config, self, features, prompt, rng, temperature, rows)

    def candidates(self, result: DecodeResult, n: int, sample_begin: int, eot: int) -> list[Candidates]:
        group = self.copies
        return [[(sampled_tokens(result.tokens[i * group + g], sample_begin, eot),
                  float(result.sum_logprobs[i * group + g])) for g in range(group)] for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Greedy(TokenStrategy):
    """The most likely token at every step."""

    def choose(self, logits, temperature, key, seeds):
        return jnp.argmax(logits, axis=-1)


@dataclasses.dataclass(frozen=True)
class Sampling(TokenStrategy):
    """A draw from softmax(logits / temperature), `best_of` independent draws per window."""

    best_of: int = 1

    @property
    def copies(self) -> int:
        return self.best_of

    def choose(self, logits, temperature, key, seeds):
        keys = jax.vmap(lambda seed: jax.random.fold_in(key, seed))(seeds)
        return jax.vmap(jax.random.categorical)(keys, logits / temperature)


@dataclasses.dataclass(frozen=True)
class BeamSearch:
    """The reference's beam search: `beam_size` beams, round(beam_size * patience) finished
    hypotheses collected per window."""

    beam_size: int = 5
    patience: float = 1.0
    shrinkable: ClassVar[bool] = False  # a row's beams finish together; the loop runs whole

    @property
    def copies(self) -> int:
        return 1

    @property
    def max_candidates(self) -> int:
        return max(1, round(self.beam_size * self.patience))

    def run(self, model: Whisper, config: DecodeConfig, features: jax.Array, prompt: jax.Array, rng: jax.Array,
            temperature: jax.Array, rows: Optional[RowSpec]) -> BeamResult:
        return beam_search_from_features(model, config, self.beam_size, self.max_candidates, features, prompt, rows)

    def candidates(self, result: BeamResult, n: int, sample_begin: int, eot: int) -> list[Candidates]:
        return [finalize_beams(result.finished_tokens[i], result.finished_scores[i], result.finished_count[i],
                               result.beam_tokens[i], result.beam_scores[i], self.beam_size, sample_begin, eot)
                for i in range(n)]

