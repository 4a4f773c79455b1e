"""The host runner of decoding: places inputs, runs the compiled programs, fetches results.

The model's graph is split from its weights once (`nnx.split`); weights are arguments of the
jitted programs (`programs.py`, pure and traceable), never baked-in constants, and no token
leaves the device until a loop ends. What the programs decode with is a strategy
(`strategies.py`), a static argument: `Generator.generate` dispatches on it. The compiled phases
(encode, prefill, steps, the whole window) are exposed as `Generator.programs` so that the
benchmarks time the engine's own programs. Shapes: B batch, M mels, N frames, P prompt tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from whisper_nnx.sharding import logical_spec, multihost

from ..model.whisper import Whisper
from .alignment import alignment_matrix
from .programs import (
    BeamResult,
    DecodeConfig,
    DecodeResult,
    DecodeState,
    RowSpec,
    beam_start_from_features,
    detect_language_from_features,
    run_beam_steps,
    run_steps,
    start_from_features,
    take_rows,
)
from .strategies import BeamSearch, Greedy, Strategy

__all__ = ["BeamResult", "DecodeConfig", "DecodeCounters", "DecodeResult", "DecodeState", "Generator", "Programs",
           "RowSpec", "bucket", "host_prng_key", "shrunk_width"]


@dataclasses.dataclass
class DecodeCounters:
    """The token loop's work over a run (greedy and sampling; beam search is not counted):
    `row_steps`, rows x steps the device decoded (padding rows and finished rows waiting for
    their batch included), and `useful`, the steps that produced a real row's token or its end.
    `efficiency` = useful / row_steps: what a batch that ran every row only as long as it needs
    (continuous batching) would bring to 1."""

    row_steps: int = 0
    useful: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, row_steps: int = 0, useful: int = 0) -> None:
        """Count a batch's work (batches in flight decode on threads of their own)."""
        with self._lock:
            self.row_steps += row_steps
            self.useful += useful

    @property
    def efficiency(self) -> Optional[float]:
        return self.useful / self.row_steps if self.row_steps else None


def host_prng_key(seed: int) -> Any:
    """`jax.random.PRNGKey(seed)` built on the host: the default threefry key is the seed as two
    uint32 words [high, low] (64 bits with `jax_enable_x64`, else the low 32 and a zero word); as
    a device call it is a program of its own to compile or fetch at start-up. Other key
    implementations go through JAX."""
    if jax.config.jax_default_prng_impl != "threefry2x32":
        return jax.random.PRNGKey(seed)
    bits = int(seed) & (0xFFFFFFFFFFFFFFFF if jax.config.jax_enable_x64 else 0xFFFFFFFF)
    return np.array([bits >> 32, bits & 0xFFFFFFFF], np.uint32)


def bucket(n: int, multiple: int = 1) -> int:
    """Next power of two >= n, rounded up to a multiple of `multiple` (the data-parallel size):
    few batch shapes, few compilations, every device busy."""
    size = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    return -(-size // multiple) * multiple


def shrunk_width(active: int, width: int, multiple: int = 1) -> int:
    """Rows to keep decoding `active` unfinished rows of a batch of `width`: the smallest power of
    two >= active (a multiple of `multiple`), if that halves the batch at least; else `width`."""
    target = 1 << (max(active, 1) - 1).bit_length()
    target = -(-target // multiple) * multiple
    return target if target <= width // 2 else width


class Programs(NamedTuple):
    """A generator's jitted phases, each taking the weights (`Generator.state`) first; `config`
    and `strategy` are static keywords. Lower and compile them (`.lower(...).compile()`) to time
    compilation apart, as the benchmarks do. Unsharded inputs; under a mesh, run them inside
    `Generator.context()` with inputs placed as `Generator` places them."""

    encode: Callable  # (state, mel [B, M, N]) -> features [B, S, D]
    prefill: Callable  # (state, features, prompt [B, P], rows, rng, temperature, *, config, strategy)
    # -> (DecodeState at length P, cross K/V, no-speech probability [B]); token strategies only
    steps: Callable  # (state, decode, cross, rows, temperature, stop, *, config, strategy) -> DecodeState
    # after steps up to buffer length `stop` (the decode state is donated); token strategies only
    window: Callable  # (state, mel, prompt, rows, rng, temperature, *, config, strategy) -> the
    # strategy's result: encode and the whole decode in one program (what `generate` runs)
    beam_prefill: Callable  # (state, features, prompt, rows, *, config, strategy: BeamSearch) ->
    # (BeamState at length P, cross K/V, stop length, no-speech probability [B])
    beam_steps: Callable  # (state, beams, cross, rows, stop, *, config, strategy) -> BeamState after
    # beam steps up to buffer length `stop` (the beam state is donated)


def _rows_per_process(mesh: Optional[Mesh]) -> int:
    """The rows this process contributes per call: its share of the mesh's data axis."""
    processes = jax.process_count()
    if mesh is not None and mesh.shape["data"] % processes:
        raise ValueError(f"the data axis ({mesh.shape['data']}) must split evenly over {processes} processes")
    return 1 if mesh is None else mesh.shape["data"] // processes


class Generator:
    """Holds a model's split graph and weights and the compiled programs that use them.

    With a mesh, every call traces and runs under that mesh and its logical-axis rules: inputs
    are laid out batch-major over `data`, weights and caches as the rules say. Batches must
    then be a multiple of `batch_multiple` (the `data` axis size).
    """

    def __init__(self, model: Whisper, mesh: Optional[Mesh] = None, rules=None, shrink_every: int = 32):
        """`shrink_every`: token strategies' batches stop every this many steps to drop finished
        rows (the batch halves, or more, once half its rows have finished); 0: never."""
        self.graphdef, self.state = nnx.split(model)
        self.shrink_every, self.dims = shrink_every, model.dims
        self.mesh, self.rules = mesh, tuple(rules or ())
        self.batch_multiple = _rows_per_process(mesh)
        self.counters = DecodeCounters()
        graphdef = self.graphdef
        static = ("config", "strategy")

        @jax.jit
        def _encode(state, mel):
            return nnx.merge(graphdef, state).encode(mel)

        @functools.partial(jax.jit, static_argnames=static)
        def _generate(state, mel, prompt, rows, rng, temperature, config: DecodeConfig, strategy: Strategy):
            # (named as the tests that count traces of the decode program know it)
            m = nnx.merge(graphdef, state)
            return strategy.run(m, config, m.encode(mel), prompt, rng, temperature, rows)

        @functools.partial(jax.jit, static_argnames=static)
        def _prefill(state, features, prompt, rows, rng, temperature, config: DecodeConfig, strategy: Strategy):
            return start_from_features(nnx.merge(graphdef, state), config, strategy, features, prompt, rng,
                                       temperature, rows, jnp.int32(prompt.shape[1]))

        @functools.partial(jax.jit, static_argnames=static)
        def _start(state, mel, prompt, rows, rng, temperature, stop, config: DecodeConfig, strategy: Strategy):
            m = nnx.merge(graphdef, state)
            return start_from_features(m, config, strategy, m.encode(mel), prompt, rng, temperature, rows, stop)

        @functools.partial(jax.jit, static_argnames=static, donate_argnames=("decode",))
        def _resume(state, decode, cross, rows, temperature, stop, config: DecodeConfig, strategy: Strategy):
            return run_steps(nnx.merge(graphdef, state), config, strategy, cross, temperature, rows, decode, stop)

        @functools.partial(jax.jit, static_argnames=static)
        def _beam_prefill(state, features, prompt, rows, config: DecodeConfig, strategy: BeamSearch):
            return beam_start_from_features(nnx.merge(graphdef, state), config, strategy.beam_size,
                                            strategy.max_candidates, features, prompt, rows)

        @functools.partial(jax.jit, static_argnames=static, donate_argnames=("beams",))
        def _beam_steps(state, beams, cross, rows, stop, config: DecodeConfig, strategy: BeamSearch):
            return run_beam_steps(nnx.merge(graphdef, state), config, cross, rows, beams, stop)

        @functools.partial(jax.jit, static_argnames=("sot", "language_ids"))
        def _languages(state, mel, sot: int, language_ids: tuple[int, ...]) -> jax.Array:
            m = nnx.merge(graphdef, state)
            return detect_language_from_features(m, m.encode(mel), sot, language_ids)

        @functools.partial(jax.jit, static_argnames=("heads", "eot"))
        def _align(state, mel, tokens, lengths, audio_frames, heads: tuple, eot: int):
            m = nnx.merge(graphdef, state)
            scores: list = []
            logits = m.decoder(tokens, m.encode(mel), cross_scores_out=scores)
            return alignment_matrix(scores, logits, tokens, lengths, audio_frames, heads, eot)

        self.programs = Programs(encode=_encode, prefill=_prefill, steps=_resume, window=_generate,
                                 beam_prefill=_beam_prefill, beam_steps=_beam_steps)
        self._generate, self._languages, self._align = _generate, _languages, _align
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

    def _rows(self, rows: Optional[RowSpec], batch: int, config: DecodeConfig) -> RowSpec:
        rows = rows or RowSpec(np.zeros((batch,), np.int32), np.full((batch,), config.sample_len, np.int32),
                               np.full((batch,), config.sot_index, np.int32), np.arange(batch, dtype=np.int32))
        return RowSpec(*(self._place(np.asarray(a, np.int32)) for a in rows))

    def generate(self, mel: jax.Array, prompt: jax.Array, config: DecodeConfig, seed: int = 0,
                 temperature: float = 1.0, rows: Optional[RowSpec] = None, strategy: Strategy = Greedy()) -> Any:
        """mel [B, M, N] and prompt [B, P] (left-padded as `rows` says; None: no padding) -> the
        strategy's result (`DecodeResult` for token strategies, `BeamResult` for beam search);
        `seed` and `temperature` feed the strategies that draw.

        A shrinkable strategy's batch (`shrink_every`, one process) decodes in stretches of that
        many steps; between them, once at most half its rows are unfinished, those rows move to a
        batch of half the width (or less), so one long row does not keep every finished row's
        work going. Rows come back in their original order, as host arrays.
        """
        batch = prompt.shape[0]
        shrinkable = self.shrinks(batch, strategy)
        with self.context():
            args = (self.state, self._place(mel), self._place(prompt), self._rows(rows, batch, config),
                    host_prng_key(seed), np.float32(temperature))
            if not shrinkable:
                return self._generate(*args, config=config, strategy=strategy)
            return self._generate_shrinking(args, prompt.shape[1] + config.sample_len, config, strategy)

    def shrinks(self, batch: int, strategy: Strategy) -> bool:
        """Whether `generate` decodes a batch of `batch` rows in shrinking stretches (and counts
        its row-steps itself) rather than as one whole-loop program."""
        return (strategy.shrinkable and self.shrink_every > 0 and jax.process_count() == 1
                and shrunk_width(1, batch, self.batch_multiple) < batch)

    def _generate_shrinking(self, args: tuple, total: int, config: DecodeConfig, strategy: Strategy
                            ) -> DecodeResult:
        """`generate` in stretches of `shrink_every` steps, dropping finished rows between them."""
        state, _, prompt, rows, _, temperature = args
        batch = prompt.shape[0]
        length = prompt.shape[1]
        static = dict(config=config, strategy=strategy)
        decode, cross, no_speech = self._start(*args, np.int32(length + self.shrink_every), **static)
        tokens, sum_logprobs = np.empty((batch, total), np.int32), np.empty((batch,), np.float32)
        origin = np.arange(batch)  # the original row of each current row
        counted = length  # buffer length up to which row-steps are counted
        while True:
            finished, length = jax.device_get((decode.finished, decode.length))
            self.counters.add(row_steps=finished.size * (int(length) - counted))
            counted = int(length)
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
            decode = self._resume(state, decode, cross, rows, temperature, np.int32(length + self.shrink_every),
                                  **static)
        last_tokens, last_logprobs = jax.device_get((decode.tokens, decode.sum_logprobs))
        tokens[origin], sum_logprobs[origin] = last_tokens, last_logprobs
        return DecodeResult(tokens, sum_logprobs, np.asarray(jax.device_get(no_speech)))

    def beam_search(self, mel: jax.Array, prompt: jax.Array, config: DecodeConfig,
                    rows: Optional[RowSpec] = None, strategy: BeamSearch = BeamSearch()) -> BeamResult:
        """`generate` with a beam-search strategy: a BeamResult on device."""
        return self.generate(mel, prompt, config, rows=rows, strategy=strategy)

    def language_probs(self, mel: jax.Array, sot: int, language_ids: tuple[int, ...]) -> jax.Array:
        """mel [B, M, N] -> [B, n_languages] language probabilities."""
        with self.context():
            return self._languages(self.state, self._place(mel), sot=sot, language_ids=language_ids)

    def alignment(self, mel: jax.Array, tokens: np.ndarray, lengths: np.ndarray, audio_frames: np.ndarray,
                  heads: tuple[tuple[int, int], ...], eot: int) -> tuple[jax.Array, jax.Array]:
        """mel [B, M, N], teacher-forced tokens [B, T] (right-padded to `lengths` [B]) and
        audio frames [B] -> (alignment matrix [B, T, S], token probabilities [B, T]); see
        alignment.py."""
        with self.context():
            placed = (self._place(np.asarray(a, np.int32)) for a in (tokens, lengths, audio_frames))
            return self._align(self.state, self._place(mel), *placed, heads=tuple(heads), eot=eot)
