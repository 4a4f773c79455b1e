"""Continuous batching: a fixed set of decoder slots over one static KV cache.

A batch decoded whole runs until its slowest row ends, and a fallback retry waits for a batch
of its own. Here the batch is a set of W slots, each row at its own length: a row that ends
frees its slot, and the next waiting row (a new window, or a retry at the next temperature) is
inserted there (its encoder pass and prompt prefill) while the other rows go on. The host
stops the loop only when enough slots are free to be worth an insert, or every `stretch`
steps to look; once nothing waits, the busy rows move to a narrower slot set as they thin out,
as `Generator`'s shrinking does.

Every row keeps its own coordinates: its prompt left-padded to the set's prompt width P, its
sampled tokens from P on, its self-attention cache at those same positions, and its `length`.
So a row computes what it computes in a whole-batch program of the same prompt width
(`programs.py`): the same positions, the same logit rules (`logit_rules` take per-row lengths),
and a sampling row draws from the same random stream (its run key folded with its length, then
its seed). Greedy and
sampling rows share slots (per-row temperature: 0 is greedy); beam search keeps its own loop.

Shapes: W slots, n inserted rows, M mels, N frames, P prompt width, L = P + sample_len, V
vocabulary, H heads, S audio positions, K head width.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..model.kv_cache import KVCache
from .generate import DecodeConfig, Generator, RowSpec, bucket, host_prng_key
from .logit_rules import apply_rules
from .programs import _no_speech_prob
from .search import sampled_tokens


class SlotState(NamedTuple):
    """The slot loop's carry; a free slot is a finished row."""

    length: jax.Array  # [W] int32: tokens in each row's buffer
    tokens: jax.Array  # [W, L] int32
    logits: jax.Array  # [W, V] float32: each row's next-token logits
    sum_logprobs: jax.Array  # [W] float32
    finished: jax.Array  # [W] bool
    no_speech: jax.Array  # [W] float32: <|nospeech|> probability at the row's prefill
    temperature: jax.Array  # [W] float32: 0 picks the most likely token
    rng: jax.Array  # [W, 2] uint32: each row's run key (its decode call's seed)
    rows: RowSpec  # pad, limit, sot, seed, each [W]
    cache: KVCache  # self-attention [W, H, L, K] per layer; no cross part
    cross: tuple  # (cross K per layer, cross V per layer), each [W, H, S, K]


@dataclasses.dataclass
class SlotRequest:
    """One row to decode: row `mel_row` of the mel batch `mel` [B, M, N], its prompt [P]
    left-padded as `spec` says (pad, limit, sot, seed), at `temperature` with the run key of
    `seed`. `tag`: the caller's."""

    mel: jax.Array
    mel_row: int
    prompt: np.ndarray
    spec: tuple
    temperature: float
    seed: int
    tag: object = None
    call: Optional["SlotCall"] = None


class SlotResult(NamedTuple):
    tokens: list  # the sampled tokens, up to (not including) EOT
    sum_logprob: float
    no_speech_prob: float


def _choose(logits: jax.Array, temperature: jax.Array, rng: jax.Array, length: jax.Array,
            seed: jax.Array) -> jax.Array:
    """Filtered logits [W, V] -> next tokens [W]: the most likely where temperature is 0, else a
    draw from softmax(logits / temperature) with the key a whole-batch program gives that row
    (run key folded with the length, then with the row's seed)."""
    greedy = jnp.argmax(logits, axis=-1)

    def draw(_):
        keys = jax.vmap(lambda k, n, s: jax.random.fold_in(jax.random.fold_in(k, n), s))(rng, length, seed)
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        return jnp.where(temperature > 0, jax.vmap(jax.random.categorical)(keys, scaled), greedy)

    return jax.lax.cond(jnp.any(temperature > 0), draw, lambda _: greedy, None)


def _slot_step(model, config: DecodeConfig, state: SlotState) -> SlotState:
    """One token for every row; finished rows stay as they are (traceable)."""
    rules = config.rules
    logits = apply_rules(state.logits, state.tokens, state.length, rules)
    chosen = _choose(logits, state.temperature, state.rng, state.length, state.rows.seed).astype(jnp.int32)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), chosen[:, None], axis=-1)[:, 0]
    live = ~state.finished
    sum_logprobs = state.sum_logprobs + jnp.where(live, logprob, 0.0)
    chosen = jnp.where(live, chosen, rules.eot)
    tokens = state.tokens.at[jnp.arange(chosen.shape[0]), state.length].set(chosen, mode="drop")
    sampled = state.length + 1 - rules.sample_begin
    finished = state.finished | (chosen == rules.eot) | (sampled >= state.rows.limit)
    position = jnp.minimum(state.length, state.tokens.shape[1] - 1)
    step_logits, cache = model.decode_step(chosen[:, None], position, state.cache.with_cross(state.cross),
                                           state.rows.pad)
    return state._replace(length=jnp.where(live, state.length + 1, state.length), tokens=tokens,
                          logits=step_logits[:, -1], sum_logprobs=sum_logprobs, finished=finished,
                          cache=cache.without_cross()[0])


def run_slot_steps(model, config: DecodeConfig, state: SlotState, steps: jax.Array, free: jax.Array
                   ) -> tuple[SlotState, jax.Array]:
    """Steps until `steps` are done, at least `free` rows are finished, or all are (traceable)
    -> (state, steps run)."""
    def going(carry):
        s, n = carry
        return (n < steps) & (jnp.sum(s.finished) < free) & ~jnp.all(s.finished)

    def step(carry):
        s, n = carry
        return _slot_step(model, config, s), n + 1

    return jax.lax.while_loop(going, step, (state, jnp.int32(0)))


def prefill_rows(model, config: DecodeConfig, features: jax.Array, prompt: jax.Array, rows: RowSpec,
                 rng: jax.Array, temperature: jax.Array) -> SlotState:
    """features [n, S, D] and prompts [n, P] -> their rows as a slot state of n slots, ready to
    decode (traceable)."""
    n, width = prompt.shape
    total = width + config.sample_len
    logits, cache = model.prefill(features, prompt, total, rows.pad)
    cache, cross = cache.without_cross()
    tokens = jnp.full((n, total), config.rules.eot, jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, prompt.astype(jnp.int32), 0, axis=1)
    return SlotState(jnp.full((n,), width, jnp.int32), tokens, logits[:, -1], jnp.zeros((n,), jnp.float32),
                     jnp.zeros((n,), bool), _no_speech_prob(logits, rows.sot, config.no_speech),
                     temperature, rng, rows, cache, cross)


def put_rows(state: SlotState, new: SlotState, slots: jax.Array) -> SlotState:
    """`new`'s rows written into `state` at `slots` [n] (an index past the end drops that row:
    an insert's padding) (traceable)."""
    return jax.tree.map(lambda a, b: a.at[slots].set(b.astype(a.dtype), mode="drop"), state, new)


def take_slots(state: SlotState, index: jax.Array) -> SlotState:
    """The slot state of rows `index` [W'] (traceable)."""
    return jax.tree.map(lambda a: jnp.take(a, index, axis=0), state)


class SlotPrograms:
    """The jitted phases of continuous batching for one generator (weights are arguments)."""

    def __init__(self, generator: Generator):
        graphdef = generator.graphdef
        self.generator = generator

        @functools.partial(jax.jit, static_argnames=("config",))
        def start(state, mel, prompt, rows, rng, temperature, config: DecodeConfig):
            m = nnx.merge(graphdef, state)
            return prefill_rows(m, config, m.encode(mel), prompt, rows, rng, temperature)

        @functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("slots_state",))
        def insert(state, slots_state, mel, prompt, rows, rng, temperature, slots, config: DecodeConfig):
            m = nnx.merge(graphdef, state)
            return put_rows(slots_state, prefill_rows(m, config, m.encode(mel), prompt, rows, rng, temperature),
                            slots)

        @functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("slots_state",))
        def steps(state, slots_state, steps, free, config: DecodeConfig):
            return run_slot_steps(nnx.merge(graphdef, state), config, slots_state, steps, free)

        self.start, self.insert, self.steps = start, insert, steps
        self.take = jax.jit(take_slots)
        self.gather = jax.jit(lambda mel, index: jnp.take(mel, index, axis=0))
        self.merge = jax.jit(lambda rows, mel, index, mine: jnp.where(mine[:, None, None],
                                                                        jnp.take(mel, index, axis=0), rows))


def _repadded(request: SlotRequest, width: int, filler: int) -> tuple[np.ndarray, tuple]:
    """A request's prompt and row spec left-padded further, to `width` tokens (a row's tokens
    do not depend on its padding: positions count from its first real token, padding is masked)."""
    extra = width - len(request.prompt)
    pad, limit, sot, seed = request.spec
    prompt = np.concatenate([np.full((extra,), filler, np.int32), np.asarray(request.prompt, np.int32)])
    return prompt, (pad + extra, limit, sot + extra, seed)


class SlotCall:
    """One caller's requests in a `SlotService`: `ask` queues one (also from `finish`, for a
    retry); `done` once every request asked has been finished."""

    def __init__(self, service: "SlotService", config: DecodeConfig,
                 finish: Callable[[SlotRequest, SlotResult], None]):
        self.service, self.config, self.finish = service, config, finish
        self.pending = 0
        self.error: Optional[BaseException] = None  # the device error that ended this call

    def ask(self, request: SlotRequest) -> None:
        request.call = self
        self.pending += 1
        self.service.queue.append(request)

    @property
    def done(self) -> bool:
        return self.pending == 0


def _same_rules(a: DecodeConfig, b: DecodeConfig) -> bool:
    """Whether rows of configs `a` and `b` can share slots: everything equal but the prompt
    width (rows are re-padded to the slot set's)."""
    return dataclasses.replace(a, rules=dataclasses.replace(a.rules, sample_begin=0)) == \
        dataclasses.replace(b, rules=dataclasses.replace(b.rules, sample_begin=0))


class SlotService:
    """One slot set shared by every caller of a generator: `serve` decodes a call's requests
    (and the retries its `finish` asks for) and returns when they are all finished. Calls from
    several threads (the device lane's batches in flight) share the slots: a batch's rows fill
    the slots the previous batch's rows free, so no batch waits on its slowest row alone.
    Whichever waiting caller finds the loop free drives it, one stretch at a time.

    The slot set has one prompt width P, the widest of the rows waiting when it was built (an
    idle set is rebuilt for what waits): rows with shorter prompts are padded to it (the same
    computation but for float rounding: attention sums over more masked positions, so a near
    tie between two tokens may fall the other way); a row with a longer one (or other rules)
    waits until the set has drained, and a new set of its width starts. `width` slots at most
    (it grows to the largest call): the set is as wide as the power of two that holds its busy
    rows and the rows waiting, narrowed once at most half of it would be busy (as `Generator`
    shrinks its batches) and widened when rows wait. One process only. `stretch`: most steps between two looks at the slots; an
    insert is made once `min(waiting, width // insert_fraction)` slots (at least 1) are free;
    with none waiting, the loop stops once `busy // insert_fraction` rows (at least 1) have ended,
    since their calls may be waiting on them."""

    def __init__(self, programs: SlotPrograms, stretch: int = 32, insert_fraction: int = 4):
        self.programs, self.stretch, self.insert_fraction = programs, stretch, insert_fraction
        self.width = 0
        self.queue: collections.deque[SlotRequest] = collections.deque()
        self.config: Optional[DecodeConfig] = None  # the slot set's
        self.state: Optional[SlotState] = None
        self.owners: list[Optional[SlotRequest]] = []  # per slot: the request in it (None: free)
        self._driving = threading.Lock()
        self._changed = threading.Condition()
        self._mutex = threading.Lock()  # the queue and the calls' counts

    def serve(self, config: DecodeConfig, requests: list[SlotRequest], width: int,
              finish: Callable[[SlotRequest, SlotResult], None]) -> None:
        """Decode `requests` (decode settings `config`, prompts of `config.rules.sample_begin`
        tokens) over at least `width` slots; `finish(request, result)` is called once per request,
        on whichever thread drives the loop, and may `request.call.ask` a follow-up."""
        call = SlotCall(self, config, finish)
        with self._mutex:
            self.width = max(self.width, width)
            for request in requests:
                call.ask(request)
        while not call.done and call.error is None:
            if self._driving.acquire(blocking=False):
                try:
                    self._drive()
                except BaseException as err:
                    self._fail_all(err)
                    raise
                finally:
                    self._driving.release()
                    with self._changed:
                        self._changed.notify_all()
            else:
                with self._changed:
                    self._changed.wait(timeout=0.05)
        if call.error is not None:
            raise call.error

    def _fail_all(self, err: BaseException) -> None:
        """A device call failed: every call with a row in the slots or waiting ends with `err`,
        and the next call starts a new slot set."""
        with self._mutex:
            for request in [*self.queue, *(o for o in self.owners if o is not None)]:
                request.call.error = err
            self.queue.clear()
            self.state, self.owners, self.config = None, [], None

    def _drive(self) -> None:
        """One stretch: waiting rows into free slots, steps, finished rows handed back."""
        with self._mutex:
            self._admit()
            fits = sum(self._fits(r) for r in self.queue)
        if self.state is None:
            return
        busy = sum(o is not None for o in self.owners)
        # Stop for an insert once enough slots are free for the rows waiting, or, with none
        # waiting, as soon as a few rows end (their calls may be waiting on them to go on).
        share = max(1, len(self.owners) // self.insert_fraction)
        wanted = min(fits, share) if fits else max(1, busy // self.insert_fraction)
        generator = self.programs.generator
        self.state, ran = self.programs.steps(generator.state, self.state, np.int32(self.stretch),
                                              np.int32(len(self.owners) - busy + wanted), config=self.config)
        finished, ran = jax.device_get((self.state.finished, ran))
        generator.counters.add(row_steps=int(ran) * len(self.owners))
        done = [i for i, o in enumerate(self.owners) if o is not None and finished[i]]
        if not done:
            return
        tokens, logprobs, no_speech = jax.device_get((self.state.tokens, self.state.sum_logprobs,
                                                      self.state.no_speech))
        begin, eot = self.config.rules.sample_begin, self.config.rules.eot
        for i in done:
            request, self.owners[i] = self.owners[i], None
            with self._mutex:
                request.call.finish(request, SlotResult(sampled_tokens(tokens[i], begin, eot), float(logprobs[i]),
                                                        float(no_speech[i])))
                request.call.pending -= 1

    def _fits(self, request: SlotRequest) -> bool:
        """Whether `request` can join the current slot set."""
        return (self.config is not None and _same_rules(request.call.config, self.config)
                and len(request.prompt) <= self.config.rules.sample_begin)

    def _admit(self) -> None:
        """Waiting rows that fit into free slots; a new slot set once the current one is empty
        and a waiting row does not fit it; the set narrowed or widened to what is waiting."""
        busy = sum(o is not None for o in self.owners)
        if self.queue and busy == 0:  # an idle set is rebuilt for what waits: its rules, its widest prompt
            first = self.queue[0]
            widest = max(len(r.prompt) for r in self.queue if _same_rules(r.call.config, first.call.config))
            wanted = dataclasses.replace(first.call.config,
                                         rules=dataclasses.replace(first.call.config.rules, sample_begin=widest))
            if wanted != self.config:
                self.config, self.state, self.owners = wanted, None, []
        fitting = [r for r in self.queue if self._fits(r)]
        # The set's width follows the rows it has and can take (a power of two, at most `width`):
        # wider when rows wait, narrower once at most half of it would be busy.
        needed = min(self.width, bucket(busy + len(fitting)))
        if self.state is not None and (needed > len(self.owners) or needed <= len(self.owners) // 2):
            self._resize(needed)
        if not fitting:
            return
        free = [i for i, o in enumerate(self.owners) if o is None] if self.state is not None \
            else list(range(needed))
        taken = fitting[:len(free)]
        chosen = set(map(id, taken))
        self.queue = collections.deque(r for r in self.queue if id(r) not in chosen)
        generator = self.programs.generator
        if self.state is None:  # a new set: its first rows, filler rows finished from the start
            padded = taken + [taken[0]] * (needed - len(taken))
            self.state = self.programs.start(generator.state, *self._inputs(padded), config=self.config)
            if len(taken) < needed:
                self.state = self.state._replace(finished=self.state.finished.at[len(taken):].set(True))
            self.owners = taken + [None] * (needed - len(taken))
            return
        size = min(bucket(len(taken)), len(self.owners))
        padded = taken + [taken[0]] * (size - len(taken))
        slots = np.asarray(free[:len(taken)] + [len(self.owners)] * (size - len(taken)), np.int32)  # past the end: dropped
        self.state = self.programs.insert(generator.state, self.state, *self._inputs(padded), slots,
                                          config=self.config)
        for slot, request in zip(free, taken):
            self.owners[slot] = request

    def _inputs(self, requests: list[SlotRequest]) -> tuple:
        """The insert program's per-row inputs: mel rows, prompts (padded to the set's width),
        row specs, run keys and temperatures."""
        width, filler = self.config.rules.sample_begin, self.config.rules.eot
        prompts, specs = zip(*(_repadded(r, width, filler) for r in requests))
        spec = RowSpec(*(np.asarray(column, np.int32) for column in zip(*specs)))
        rng = np.stack([np.asarray(host_prng_key(r.seed)) for r in requests])
        temperature = np.asarray([r.temperature for r in requests], np.float32)
        return self._mel_rows(requests), np.stack(prompts), spec, rng, temperature

    def _mel_rows(self, requests: list[SlotRequest]) -> jax.Array:
        """[n, M, N]: each request's mel row, gathered from its batch (one call per batch)."""
        sources: dict[int, jax.Array] = {id(r.mel): r.mel for r in requests}
        rows = None
        for key, mel in sources.items():
            mine = np.asarray([id(r.mel) == key for r in requests])
            index = np.asarray([r.mel_row if id(r.mel) == key else 0 for r in requests], np.int32)
            rows = self.programs.gather(mel, index) if rows is None else self.programs.merge(rows, mel, index, mine)
        return rows

    def _resize(self, width: int) -> None:
        """The slot set narrowed to `width` (busy rows kept) or widened (free filler slots)."""
        if width == len(self.owners):
            return
        busy = [i for i, o in enumerate(self.owners) if o is not None]
        free = [i for i, o in enumerate(self.owners) if o is None]
        keep = (busy + free)[:width] if width < len(self.owners) else \
            list(range(len(self.owners))) + [free[0] if free else 0] * (width - len(self.owners))
        self.state = self.programs.take(self.state, np.asarray(keep, np.int32))
        if width > len(self.owners):  # the copies are free slots
            self.state = self.state._replace(finished=self.state.finished.at[len(self.owners):].set(True))
            self.owners = self.owners + [None] * (width - len(self.owners))
        else:
            self.owners = [self.owners[i] for i in keep]
