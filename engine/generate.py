"""One jitted program per decoding setting: encode, prefill, then a `lax.while_loop` of steps.

The model's graph is split from its weights once (`nnx.split`); weights are arguments of the
jitted functions, never baked-in constants, and no token leaves the device until the loop ends.
Shapes: B batch, M mels, N frames, P prompt tokens, L = P + sample_len buffer, V vocabulary.

Prompts of one batch may differ in length (sequential long-form conditions each file on its
own previous text): they arrive left-padded to P with `pad` [B] padding positions per row, and
`limit` [B] caps each row's sampled tokens (the reference stops when a row's own buffer would
pass the text context).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from whisper_nnx.sharding import logical_spec, multihost

from .alignment import alignment_matrix
from .kv_cache import KVCache
from .logit_rules import LogitRules, apply_rules
from .model import Whisper
from .search import beam_step


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static settings of one greedy/sampling run (a jit static argument)."""

    rules: LogitRules
    sample_len: int = 224  # buffer room for sampled tokens (half the text context); `limit` may stop rows sooner
    sample: bool = False  # False: greedy argmax; True: sample from softmax(logits / temperature),
    # the temperature being a traced argument, so every temperature shares one compiled program
    sot_index: int = 0  # position of <|startoftranscript|> in the prompt (no-speech prob)
    no_speech: int | None = None  # <|nospeech|> id, None when the vocabulary lacks it


class DecodeState(NamedTuple):
    """The while_loop carry."""

    length: jax.Array  # [] int32: tokens written to the buffer so far
    tokens: jax.Array  # [B, L] int32
    logits: jax.Array  # [B, V] float32: next-token logits at position `length`
    sum_logprobs: jax.Array  # [B] float32
    finished: jax.Array  # [B] bool
    cache: KVCache  # self-attention part only; cross K/V are loop constants
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """Static settings of one beam-search run (a jit static argument)."""

    rules: LogitRules
    beam_size: int = 5
    patience: float = 1.0  # collect round(beam_size * patience) finished hypotheses
    sample_len: int = 224
    sot_index: int = 0
    no_speech: int | None = None

    @property
    def max_candidates(self) -> int:
        return max(1, round(self.beam_size * self.patience))


class BeamState(NamedTuple):
    """The beam-search while_loop carry (K beams per example, C finished slots)."""

    length: jax.Array  # [] int32
    tokens: jax.Array  # [B, K, L]
    logits: jax.Array  # [B * K, V]
    sum_logprobs: jax.Array  # [B, K]
    finished_tokens: jax.Array  # [B, C, L]
    finished_scores: jax.Array  # [B, C]
    finished_count: jax.Array  # [B] int32
    cache: KVCache  # batch B * K, self-attention part only


class BeamResult(NamedTuple):
    finished_tokens: jax.Array  # [B, C, L]
    finished_scores: jax.Array  # [B, C]
    finished_count: jax.Array  # [B]
    beam_tokens: jax.Array  # [B, K, L]: live beams, for examples that finished too few
    beam_scores: jax.Array  # [B, K]
    no_speech_prob: jax.Array  # [B]


class DecodeResult(NamedTuple):
    tokens: jax.Array  # [B, L]: prompt, sampled tokens, EOT padding
    sum_logprobs: jax.Array  # [B]
    no_speech_prob: jax.Array  # [B]


class RowLayout(NamedTuple):
    """Per-row loop constants of a batch of left-padded prompts."""

    pad: jax.Array  # [B] int32: leading padding positions
    limit: jax.Array  # [B] int32: most tokens the row may sample
    sot: jax.Array  # [B] int32: position of <|startoftranscript|> (the no-speech probability's)
    seed: jax.Array  # [B] int32: each row's own random stream (sampling), so a row draws the
    # same tokens whatever batch, batch position or process it is decoded in


def _step(model: Whisper, config: SamplingConfig, cross: tuple, temperature: jax.Array, rows: RowLayout,
          state: DecodeState) -> DecodeState:
    rules = config.rules
    logits = apply_rules(state.logits, state.tokens, state.length, rules)
    rng = state.rng  # the run's key; each step and row folds in its own numbers
    if config.sample:
        step_key = jax.random.fold_in(rng, state.length)
        keys = jax.vmap(lambda seed: jax.random.fold_in(step_key, seed))(rows.seed)
        next_tokens = jax.vmap(jax.random.categorical)(keys, logits / temperature)
    else:
        next_tokens = jnp.argmax(logits, axis=-1)
    next_tokens = next_tokens.astype(jnp.int32)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logprobs, next_tokens[:, None], axis=-1)[:, 0]
    sum_logprobs = state.sum_logprobs + jnp.where(state.finished, 0.0, chosen)
    next_tokens = jnp.where(state.finished, rules.eot, next_tokens)
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, next_tokens[:, None], state.length, axis=1)
    sampled = state.length + 1 - rules.sample_begin
    finished = state.finished | (next_tokens == rules.eot) | (sampled >= rows.limit)
    step_logits, cache = model.decode_step(next_tokens[:, None], state.length, state.cache.with_cross(cross),
                                           rows.pad)
    return DecodeState(state.length + 1, tokens, step_logits[:, -1], sum_logprobs, finished,
                       cache.without_cross()[0], rng)


def _default_rows(rows: Optional[RowLayout], batch: int, config) -> RowLayout:
    if rows is not None:
        return rows
    return RowLayout(jnp.zeros((batch,), jnp.int32), jnp.full((batch,), config.sample_len, jnp.int32),
                     jnp.full((batch,), config.sot_index, jnp.int32), jnp.arange(batch, dtype=jnp.int32))


def start_from_features(model: Whisper, config: SamplingConfig, features: jax.Array, prompt: jax.Array,
                        rng: jax.Array, temperature: jax.Array, rows: RowLayout, stop: jax.Array
                        ) -> tuple[DecodeState, tuple, jax.Array]:
    """Prefill prompt [B, P] against features [B, S, D], then steps while the buffer holds fewer
    than `stop` tokens -> (loop state, cross K/V, no-speech probability [B]) (traceable)."""
    batch, prompt_len = prompt.shape
    total = prompt_len + config.sample_len
    logits, cache = model.prefill(features, prompt, total, rows.pad)
    cache, cross = cache.without_cross()
    no_speech_prob = _no_speech_prob(logits, rows.sot, config.no_speech)
    tokens = jnp.full((batch, total), config.rules.eot, jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, prompt.astype(jnp.int32), 0, axis=1)
    state = DecodeState(jnp.int32(prompt_len), tokens, logits[:, -1], jnp.zeros((batch,), jnp.float32),
                        jnp.zeros((batch,), bool), cache, rng)
    return run_steps(model, config, cross, temperature, rows, state, stop), cross, no_speech_prob


def run_steps(model: Whisper, config: SamplingConfig, cross: tuple, temperature: jax.Array, rows: RowLayout,
              state: DecodeState, stop: jax.Array) -> DecodeState:
    """Decode steps until the buffer holds `stop` tokens or every row has finished (traceable)."""
    stop = jnp.minimum(stop, state.tokens.shape[1])
    return jax.lax.while_loop(lambda s: (s.length < stop) & ~jnp.all(s.finished),
                              functools.partial(_step, model, config, cross, temperature, rows), state)


def sample_from_features(model: Whisper, config: SamplingConfig, features: jax.Array, prompt: jax.Array,
                         rng: jax.Array, temperature: jax.Array = 1.0,
                         rows: Optional[RowLayout] = None) -> DecodeResult:
    """features [B, S, D], prompt [B, P] (left-padded per `rows`) -> greedy/sampled continuation
    (traceable)."""
    rows = _default_rows(rows, prompt.shape[0], config)
    state, _, no_speech_prob = start_from_features(model, config, features, prompt, rng, temperature, rows,
                                                   jnp.int32(prompt.shape[1] + config.sample_len))
    return DecodeResult(state.tokens, state.sum_logprobs, no_speech_prob)


def take_rows(state: DecodeState, cross: tuple, rows: RowLayout, index: jax.Array
              ) -> tuple[DecodeState, tuple, RowLayout]:
    """The loop state, cross K/V and row layout of batch rows `index` [B'] (traceable)."""
    take = functools.partial(jnp.take, indices=index, axis=0)
    state = state._replace(tokens=take(state.tokens), logits=take(state.logits),
                           sum_logprobs=take(state.sum_logprobs), finished=take(state.finished),
                           cache=state.cache.reorder(index))
    return state, jax.tree.map(take, cross), RowLayout(*map(take, rows))


def shrunk_width(active: int, width: int, multiple: int = 1) -> int:
    """Rows to keep decoding `active` unfinished rows of a batch of `width`: the smallest power of
    two >= active (a multiple of `multiple`), if that halves the batch at least; else `width`."""
    target = 1 << (max(active, 1) - 1).bit_length()
    target = -(-target // multiple) * multiple
    return target if target <= width // 2 else width


def _no_speech_prob(logits: jax.Array, sot: jax.Array, no_speech: int | None) -> jax.Array:
    """Softmax probability of <|nospeech|> at each row's <|startoftranscript|> (sot [B]): [B]."""
    if no_speech is None:
        return jnp.zeros((logits.shape[0],), jnp.float32)
    at_sot = jnp.take_along_axis(logits, sot[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    return jax.nn.softmax(at_sot, axis=-1)[:, no_speech]


def _beam_loop_step(model: Whisper, config: BeamConfig, cross: tuple, pad: jax.Array,
                    state: BeamState) -> BeamState:
    batch, beams, buffer = state.tokens.shape
    logits = apply_rules(state.logits, state.tokens.reshape(batch * beams, buffer), state.length,
                         config.rules)
    logprobs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beams, -1)
    step = beam_step(logprobs, state.tokens, state.sum_logprobs, state.length,
                     state.length == config.rules.sample_begin, config.rules.eot,
                     state.finished_tokens, state.finished_scores, state.finished_count)
    tokens = jnp.take_along_axis(state.tokens, step.source[:, :, None], axis=1)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, step.next_tokens[:, :, None], state.length, axis=2)
    step_logits, cache = model.decode_step(step.next_tokens.reshape(-1, 1), state.length,
                                           state.cache.reorder_beams(step.source).with_cross(cross), pad)
    return BeamState(state.length + 1, tokens, step_logits[:, -1], step.scores, step.finished_tokens,
                     step.finished_scores, step.finished_count, cache.without_cross()[0])


def beam_search_from_features(model: Whisper, config: BeamConfig, features: jax.Array, prompt: jax.Array,
                              rows: Optional[RowLayout] = None) -> BeamResult:
    """features [B, S, D], prompt [B, P] (left-padded per `rows`) -> beam-search hypotheses
    (traceable). Every row stops at the smallest of the rows' limits (beams of a row cannot
    be frozen one row at a time cheaply; rows only differ when a prompt leaves < sample_len
    tokens of context, i.e. after a window of > 220 tokens)."""
    batch, prompt_len = prompt.shape
    beams = config.beam_size
    rows = _default_rows(rows, batch, config)
    total = prompt_len + config.sample_len
    stop = prompt_len + jnp.minimum(jnp.min(rows.limit), config.sample_len)
    logits, cache = model.prefill(features, prompt, total, rows.pad)
    no_speech_prob = _no_speech_prob(logits, rows.sot, config.no_speech)
    # All beams start from the same prefix: prefill once per example, then repeat the self
    # cache. Cross K/V stay one per example: the beams of an example attend to them together
    # (attention_kernels.attend groups their queries), so each step reads them once, not once per beam.
    cache, cross = cache.without_cross()
    cache = jax.tree.map(lambda a: jnp.repeat(a, beams, axis=0), cache)
    tokens = jnp.full((batch, beams, total), config.rules.eot, jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(
        tokens, jnp.broadcast_to(prompt.astype(jnp.int32)[:, None], (batch, beams, prompt_len)), 0, axis=2)
    slots = config.max_candidates
    state = BeamState(
        length=jnp.int32(prompt_len), tokens=tokens, logits=jnp.repeat(logits[:, -1], beams, axis=0),
        sum_logprobs=jnp.zeros((batch, beams), jnp.float32),
        finished_tokens=jnp.full((batch, slots, total), config.rules.eot, jnp.int32),
        finished_scores=jnp.full((batch, slots), -jnp.inf, jnp.float32),
        finished_count=jnp.zeros((batch,), jnp.int32), cache=cache)
    state = jax.lax.while_loop(
        lambda s: (s.length < stop) & ~jnp.all(s.finished_count >= slots),
        functools.partial(_beam_loop_step, model, config, cross, jnp.repeat(rows.pad, beams)), state)
    return BeamResult(state.finished_tokens, state.finished_scores, state.finished_count, state.tokens,
                      state.sum_logprobs, no_speech_prob)


def detect_language_from_features(model: Whisper, features: jax.Array, sot: int,
                                  language_ids: tuple[int, ...]) -> jax.Array:
    """One decoder step on [sot]: probabilities over `language_ids` -> [B, n_languages]."""
    prompt = jnp.full((features.shape[0], 1), sot, jnp.int32)
    logits, _ = model.prefill(features, prompt, 1)
    return jax.nn.softmax(logits[:, 0, jnp.asarray(language_ids)], axis=-1)


class Generator:
    """Holds a model's split graph and weights and the compiled programs that use them.

    With a mesh, every call traces and runs under that mesh and its logical-axis rules: inputs
    are laid out batch-major over `data`, weights and caches as the rules say. Batches must
    then be a multiple of `batch_multiple` (the `data` axis size).
    """

    def __init__(self, model: Whisper, mesh: Optional[Mesh] = None, rules=None, shrink_every: int = 32):
        """`shrink_every`: greedy/sampled batches stop every this many steps to drop finished
        rows (the batch halves, or more, once half its rows have finished); 0: never."""
        self.graphdef, self.state = nnx.split(model)
        self.shrink_every = shrink_every
        self.dims = model.dims
        self.mesh, self.rules = mesh, tuple(rules or ())
        processes = jax.process_count()
        if mesh is not None and mesh.shape["data"] % processes:
            raise ValueError(f"the data axis ({mesh.shape['data']}) must split evenly over {processes} processes")
        # Rows this process contributes per call must fill its share of the data axis.
        self.batch_multiple = 1 if mesh is None else mesh.shape["data"] // processes
        graphdef = self.graphdef

        @functools.partial(jax.jit, static_argnames=("config",))
        def _generate(state, mel, prompt, rows, rng, temperature, config: SamplingConfig) -> DecodeResult:
            m = nnx.merge(graphdef, state)
            return sample_from_features(m, config, m.encode(mel), prompt, rng, temperature, rows)

        @functools.partial(jax.jit, static_argnames=("config",))
        def _beam(state, mel, prompt, rows, config: BeamConfig) -> BeamResult:
            m = nnx.merge(graphdef, state)
            return beam_search_from_features(m, config, m.encode(mel), prompt, rows)

        @functools.partial(jax.jit, static_argnames=("sot", "language_ids"))
        def _languages(state, mel, sot: int, language_ids: tuple[int, ...]) -> jax.Array:
            m = nnx.merge(graphdef, state)
            return detect_language_from_features(m, m.encode(mel), sot, language_ids)

        @functools.partial(jax.jit, static_argnames=("heads", "eot"))
        def _align(state, mel, tokens, lengths, frames, heads: tuple, eot: int):
            m = nnx.merge(graphdef, state)
            scores: list = []
            logits = m.decoder(tokens, m.encode(mel), cross_scores_out=scores)
            return alignment_matrix(scores, logits, tokens, lengths, frames, heads, eot)

        @functools.partial(jax.jit, static_argnames=("config",))
        def _start(state, mel, prompt, rows, rng, temperature, stop, config: SamplingConfig):
            m = nnx.merge(graphdef, state)
            return start_from_features(m, config, m.encode(mel), prompt, rng, temperature, rows, stop)

        @functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("decode",))
        def _resume(state, decode, cross, rows, temperature, stop, config: SamplingConfig):
            return run_steps(nnx.merge(graphdef, state), config, cross, temperature, rows, decode, stop)

        self._generate, self._beam, self._languages, self._align = _generate, _beam, _languages, _align
        self._start, self._resume, self._take = _start, _resume, jax.jit(take_rows)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """The mesh and logical-axis rules this generator's programs trace and run under."""
        if self.mesh is None:
            yield
            return
        with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
            yield

    def _place(self, array: jax.Array) -> jax.Array:
        """This process's rows of a batch-major input -> the global batch laid out over `data`."""
        if self.mesh is None:
            return array
        if array.shape[0] % self.batch_multiple:
            raise ValueError(f"batch of {array.shape[0]} is not a multiple of this process's share "
                             f"of the data axis ({self.batch_multiple})")
        spec = logical_spec("batch", *([None] * (array.ndim - 1)))
        return multihost.global_batch(np.asarray(array), NamedSharding(self.mesh, spec))

    def fetch(self, result, local_batch: int):
        """Host copy of this process's `local_batch` rows of a result (all of it on one process)."""
        if self.mesh is None or jax.process_count() == 1:
            return jax.device_get(result)
        with self.context():
            rows = NamedSharding(self.mesh, logical_spec("batch"))
        return multihost.local_rows(result, multihost.local_row_range(rows, local_batch * jax.process_count()))

    def _rows(self, rows: Optional[RowLayout], batch: int, config) -> RowLayout:
        rows = rows or RowLayout(np.zeros((batch,), np.int32), np.full((batch,), config.sample_len, np.int32),
                                 np.full((batch,), config.sot_index, np.int32), np.arange(batch, dtype=np.int32))
        return RowLayout(*(self._place(np.asarray(a, np.int32)) for a in rows))

    def generate(self, mel: jax.Array, prompt: jax.Array, config: SamplingConfig, seed: int = 0,
                 temperature: float = 1.0, rows: Optional[RowLayout] = None) -> DecodeResult:
        """mel [B, M, N] and prompt [B, P] (left-padded as `rows` says; None: no padding) ->
        DecodeResult (`temperature` is used when config.sample).

        A batch that can shrink (`shrink_every`, one process) decodes in stretches of that many
        steps; between them, once at most half its rows are unfinished, those rows move to a
        batch of half the width (or less), so one long row does not keep every finished row's
        work going. Rows come back in their original order, as host arrays.
        """
        batch = prompt.shape[0]
        shrinkable = (self.shrink_every > 0 and jax.process_count() == 1
                      and shrunk_width(1, batch, self.batch_multiple) < batch)
        with self.context():
            args = (self.state, self._place(mel), self._place(prompt), self._rows(rows, batch, config),
                    jax.random.PRNGKey(seed), jnp.float32(temperature))
            if not shrinkable:
                return self._generate(*args, config=config)
            return self._generate_shrinking(args, prompt.shape[1] + config.sample_len, config)

    def _generate_shrinking(self, args: tuple, total: int, config: SamplingConfig) -> DecodeResult:
        """`generate` in stretches of `shrink_every` steps, dropping finished rows between them."""
        state, _, prompt, rows, _, temperature = args
        batch = prompt.shape[0]
        length = prompt.shape[1]
        decode, cross, no_speech = self._start(*args, jnp.int32(length + self.shrink_every), config=config)
        tokens, sum_logprobs = np.empty((batch, total), np.int32), np.empty((batch,), np.float32)
        origin = np.arange(batch)  # the original row of each current row
        while True:
            finished, length = jax.device_get((decode.finished, decode.length))
            if finished.all() or length >= total:
                break
            active = np.flatnonzero(~finished)
            width = shrunk_width(active.size, finished.size, self.batch_multiple)
            if width < finished.size:  # finished rows are final: keep them, decode the rest narrower
                done = np.flatnonzero(finished)
                kept_tokens, kept_logprobs = jax.device_get((decode.tokens, decode.sum_logprobs))
                tokens[origin[done]], sum_logprobs[origin[done]] = kept_tokens[done], kept_logprobs[done]
                keep = np.concatenate([active, done[:width - active.size]])  # fillers: finished rows
                decode, cross, rows = self._take(decode, cross, rows, self._place(keep.astype(np.int32)))
                origin = origin[keep]
            decode = self._resume(state, decode, cross, rows, temperature,
                                  jnp.int32(length + self.shrink_every), config=config)
        last_tokens, last_logprobs = jax.device_get((decode.tokens, decode.sum_logprobs))
        tokens[origin], sum_logprobs[origin] = last_tokens, last_logprobs
        return DecodeResult(tokens, sum_logprobs, np.asarray(jax.device_get(no_speech)))

    def beam_search(self, mel: jax.Array, prompt: jax.Array, config: BeamConfig,
                    rows: Optional[RowLayout] = None) -> BeamResult:
        """mel [B, M, N] and prompt [B, P] (left-padded as `rows` says) -> BeamResult on device."""
        with self.context():
            return self._beam(self.state, self._place(mel), self._place(prompt),
                              self._rows(rows, prompt.shape[0], config), config=config)

    def language_probs(self, mel: jax.Array, sot: int, language_ids: tuple[int, ...]) -> jax.Array:
        """mel [B, M, N] -> [B, n_languages] language probabilities."""
        with self.context():
            return self._languages(self.state, self._place(mel), sot=sot, language_ids=language_ids)

    def alignment(self, mel: jax.Array, tokens: np.ndarray, lengths: np.ndarray, frames: np.ndarray,
                  heads: tuple[tuple[int, int], ...], eot: int) -> tuple[jax.Array, jax.Array]:
        """mel [B, M, N], teacher-forced tokens [B, T] (right-padded to `lengths` [B]) and
        audio frames [B] -> (alignment matrix [B, T, S], token probabilities [B, T]); see
        alignment.py."""
        with self.context():
            return self._align(self.state, self._place(mel), self._place(np.asarray(tokens, np.int32)),
                               self._place(np.asarray(lengths, np.int32)), self._place(np.asarray(frames, np.int32)),
                               heads=tuple(heads), eot=eot)
