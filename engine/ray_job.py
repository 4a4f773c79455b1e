"""Bulk transcription on Ray Data: a pool of actors, each holding the whole model on its host's
local devices, fed blocks of input rows; Ray retries the blocks of an actor or node that dies, a
bounded number of times: a row that keeps killing its actor ends as its own run-error record
(`transcribe_on_ray`). Local paths reach the actors absolute (`actor_entry`); credentials never
travel in the job's `runtime_env` (`runtime_env`: each worker uses its own).

    driver: entries to do -> ray.data.from_items -> map_batches(RayTranscriber, actor pool)
            -> records streamed back -> the run's ResultSink (results.jsonl, per-format files)

`RayRecords` is that driver side as `run.BulkRun`'s record producer: `BulkRun(...,
producer=RayRecords(address, model=..., actors=N)).run()` (what `whisper-nnx transcribe --ray` does).

`RayTranscriber` is a callable class for `Dataset.map_batches` on datasets of any of these
columns: `entry` (this package's input entries, as the CLI makes them), `bytes` (encoded audio,
named by `path`/`name` when present), `array` (16 kHz float samples), or `path` (a local path or
an fsspec URL). It returns the record columns: `path`, `text`, `language`, `duration_s`,
`windows`, `error`, `error_kind`, and `record` (the whole results.jsonl record as JSON, without
tokens: `results.record_json`).

Why the driver writes the results: every record passes through the same crash-safe sink as a
single-process run (one line each, fsynced, after its files; `--resume` plans from it; an
`--output-dir` URL is mirrored as in any run), so a row retried by Ray after an actor died is
still written once (the driver skips a row it has already written), and a killed driver resumes
from its results.jsonl. Records are small next to audio; the actors do the work.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging as std_logging
import os
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from . import records, storage
from .audio import named_stream
from .entry import Entry, open_url_or_path
from .results import record_json

# Environment the actors get from the driver (where set there): offline hub, compilation cache,
# JAX platform and flags, the engine's own settings, where object storage is. Never a secret:
# `runtime_env` is readable through Ray's job and dashboard APIs (see `runtime_env`).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "JAX_PLATFORMS", "XLA_FLAGS", "WHISPER_NNX_COMPILE_CACHE",
                 "WHISPER_NNX_ATTENTION", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                 "XDG_CACHE_HOME")
RECORD_COLUMNS = (*records.CORE_FIELDS, "record")
# A row whose actor dies (out of memory, a crash in the decoder) is retried this many times on a
# restarted actor, then its block fails; its rows are tried again one per block, and a row that
# still kills its actor gets a run-error record.
TASK_RETRIES = 2


def batch_items(batch: dict) -> list:
    """The batch's rows as inputs: Entry objects, or sources made from bytes / arrays / paths."""
    if "entry" in batch:
        return list(batch["entry"])
    n = len(next(iter(batch.values())))
    names = batch.get("path", batch.get("name"))
    if "bytes" in batch:
        return [named_stream(batch["bytes"][i], str(names[i]) if names is not None else f"<row {i}>")
                for i in range(n)]
    if "array" in batch:
        return [np.asarray(batch["array"][i], np.float32) for i in range(n)]
    if "path" in batch:
        return [Entry(str(p)) for p in batch["path"]]
    raise ValueError(f"a batch needs an entry, bytes, array or path column; got {sorted(batch)}")


def record_columns(rows: Sequence[Mapping]) -> dict[str, list]:
    return {**{k: [r.get(k) for r in rows] for k in records.CORE_FIELDS},
            "record": [record_json(r) for r in rows]}


class RayTranscriber:
    """The model loaded once per actor, on the host's local devices (a data-parallel mesh when it
    has several); each call transcribes one batch of rows with the engine's cross-file batching."""

    def __init__(self, model: str = "tiny.en", dtype: str = "auto", options=None,
                 quantize: Optional[str] = None, compile_cache: Optional[str] = None):
        import jax

        from whisper_nnx.sharding import rules_for
        from whisper_nnx.sharding.mesh import make_mesh

        from .compile_cache import enable_compilation_cache
        from .options import TranscribeOptions
        from .transcribe import Transcriber

        enable_compilation_cache(compile_cache)
        local = jax.local_devices()
        mesh = make_mesh(f"data={len(local)}", devices=local) if len(local) > 1 else None
        self.transcriber = Transcriber(model, dtype=dtype, mesh=mesh, rules=rules_for("dp") if mesh else None,
                                       quantize=quantize)
        # TranscribeOptions as the CLI made them, or from_kwargs keywords
        self.options = options if isinstance(options, TranscribeOptions) else \
            TranscribeOptions.from_kwargs(**(options or {}))

    def __call__(self, batch: dict) -> dict[str, list]:
        items = batch_items(batch)
        out: list[Optional[records.Transcript]] = [None] * len(items)
        todo = []
        for i, item in enumerate(items):
            if isinstance(item, Entry) and item.error is not None:
                out[i] = records.failure(item.name, item.error, records.INPUT)
            else:
                todo.append(i)
        sources = [items[i].source() if isinstance(items[i], Entry) else items[i] for i in todo]
        for index, record in self.transcriber.transcribe_iter(sources, self.options):
            out[todo[index]] = record
        return record_columns(out)  # type: ignore[arg-type]


def runtime_env(environ: Mapping[str, str]) -> Optional[dict]:
    """The `runtime_env` the actors get: FORWARDED_ENV's variables set in `environ`, no secret.

    Credentials for object storage (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    Google's application credentials...) are never copied: a runtime_env is shown by Ray's job
    APIs and dashboard. Each worker finds its own, as any process of the cloud SDKs does: its own
    environment variables (set them where `ray start` runs), its `~/.aws` files (AWS_PROFILE is
    forwarded), or its instance / workload role; temporary credentials (with a session token)
    work, since nothing is taken from the driver."""
    env = {k: environ[k] for k in FORWARDED_ENV if k in environ}
    return {"env_vars": env} if env else None


def connect(address: Optional[str]) -> None:
    """ray.init: the cluster at `address`, or a local one started for this run ("" / None)."""
    import ray

    ray.init(address=address or None, runtime_env=runtime_env(os.environ), ignore_reinit_error=True,
             log_to_driver=False, include_dashboard=False, logging_level=std_logging.WARNING)
    # Ray Data explains at WARNING that entries travel pickled, and each execution at INFO.
    std_logging.getLogger("ray.data").setLevel(std_logging.ERROR)


def _local_file(arg, cwd: str) -> bool:
    return isinstance(arg, str) and bool(arg) and not storage.is_url(arg) and not os.path.isabs(arg) \
        and os.path.exists(os.path.join(cwd, arg))


def actor_entry(entry: Entry, cwd: Optional[str] = None) -> Entry:
    """`entry` as an actor gets it: its local files named by absolute paths resolved against the
    driver's working directory `cwd` (an actor's differs), its name (its record's `path`) as the
    user wrote it; URLs as they are. A plain file gets an opener of its absolute path; an opener
    that is a `functools.partial` gets its relative file arguments made absolute."""
    cwd = cwd or os.getcwd()
    if entry.error is not None:
        return entry
    if entry.opener is None:
        if storage.is_url(entry.name) or os.path.isabs(entry.name):
            return entry
        return dataclasses.replace(entry, opener=functools.partial(open_url_or_path, os.path.join(cwd, entry.name)))
    opener = entry.opener
    if isinstance(opener, functools.partial) and any(_local_file(a, cwd) for a in opener.args):
        args = [os.path.join(cwd, a) if _local_file(a, cwd) else a for a in opener.args]
        return dataclasses.replace(entry, opener=functools.partial(opener.func, *args, **opener.keywords))
    return entry


def _run_blocks(entries: Sequence[Entry], *, actors: int, rows_per_call: int, actor_args: dict,
                remote_args: dict) -> Iterator[dict]:
    """The records Ray Data's actor pool returns for `entries` (a block whose actor died
    TASK_RETRIES + 1 times is skipped: its rows return nothing)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.max_errored_blocks = -1  # a failed block is logged and skipped; the driver names its rows
    blocks = max(1, -(-len(entries) // rows_per_call))
    cwd = os.getcwd()
    dataset = ray.data.from_items([{"entry": actor_entry(e, cwd)} for e in entries], override_num_blocks=blocks)
    # one row per block (the retry of failed blocks): one block on an actor at a time, so that a
    # row that kills its actor does not take the blocks queued behind it down too
    pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1 if rows_per_call == 1 else None)
    results = dataset.map_batches(RayTranscriber, fn_constructor_kwargs=actor_args, batch_size=rows_per_call,
                                  batch_format="numpy", compute=pool,
                                  max_restarts=-1, max_task_retries=TASK_RETRIES, **remote_args)
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        for text in batch["record"]:
            yield json.loads(text)


def _lost(entry: Entry) -> dict:
    error = (f"{entry.name}: its Ray task failed {TASK_RETRIES + 1} times, alone in its block: the actor "
             "transcribing it died (out of memory, a crash in decoding or the model) or raised; see the Ray "
             "worker logs")
    return json.loads(record_json(records.failure(entry.name, error, records.RUN)))


def transcribe_on_ray(entries: Sequence[Entry], *, actors: int, rows_per_call: int, actor_args: dict,
                      cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                      resources: Optional[dict] = None) -> Iterator[dict]:
    """Records of `entries` as the actors finish them (each entry once, in completion order).

    An actor that dies is restarted and its block retried (TASK_RETRIES times); a block that
    still fails is run again one row per block, so that only the row that kills its actor (out of
    memory, a decoder crash) ends as a run-error record, after a bounded number of deaths."""
    if not entries:
        return
    remote_args = {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor, "resources": resources or None}
    seen: set[str] = set()
    todo, size = list(entries), rows_per_call
    while todo:
        for record in _run_blocks(todo, actors=actors, rows_per_call=size, actor_args=actor_args,
                                  remote_args=remote_args):
            if record["path"] in seen:  # a block Ray ran twice (its actor died after finishing it)
                continue
            seen.add(record["path"])
            yield record
        todo = [e for e in todo if e.name not in seen]
        if size == 1 or len(todo) <= 1:
            break
        logging.warning("Ray: %d rows of failed blocks are tried again, one per block", len(todo))
        size = 1
    for entry in todo:
        seen.add(entry.name)
        yield _lost(entry)


def _resolve_dtype(dtype: str, model: Optional[str] = None) -> str:
    from .transcribe import resolve_dtype

    return resolve_dtype(dtype, model=model)


def actor_dtype(dtype: str, cpus: float, gpus: float, resources: Optional[dict],
                model: Optional[str] = None) -> str:
    """The compute dtype `dtype` resolves to on a worker with an actor's resources (one task on
    the cluster: a GPU actor's card decides between bfloat16 and float16, a CPU worker's
    calibration between float32 and bfloat16)."""
    import ray

    probe = ray.remote(num_cpus=cpus, num_gpus=gpus, resources=resources or None)(_resolve_dtype)
    return ray.get(probe.remote(dtype, model))


class RayRecords:
    """`BulkRun`'s record producer on Ray Data: `start` joins the cluster at `address` (None or
    "": a local one started for the run), `records` streams the actors' records back; the model
    loads in each actor, this process only writes."""

    def __init__(self, address: Optional[str] = None, *, model: str = "tiny.en", dtype: str = "auto",
                 quantize: Optional[str] = None, compile_cache: Optional[str] = None, actors: int = 1,
                 rows_per_call: Optional[int] = None, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                 resources: Optional[dict] = None):
        """`rows_per_call`: input rows per actor call (None: 4 x the options' batch size)."""
        self.address, self.model, self.dtype, self.quantize = address, model, dtype, quantize
        self.compile_cache, self.actors, self.rows_per_call = compile_cache, actors, rows_per_call
        self.cpus_per_actor, self.gpus_per_actor, self.resources = cpus_per_actor, gpus_per_actor, resources

    def start(self, options) -> dict:
        """Join the cluster; returns the run facts every record carries (no mesh: each actor
        places the model on its own host)."""
        connect(self.address)
        if self.dtype == "auto":  # what "auto" means where the actors run, not on this driver
            self.dtype = actor_dtype(self.dtype, self.cpus_per_actor, self.gpus_per_actor, self.resources,
                                     self.model)
        return {"model": self.model, "dtype": self.dtype, "quantize": self.quantize,
                "long_form": options.long_form.mode, "mesh": None, "sharding": None}

    def records(self, entries: Iterable[Entry], options) -> Iterator[dict]:
        entries = list(entries)  # Ray Data takes the whole list (the driver lists everything first)
        logging.info("Ray: %d actors for %d inputs", self.actors, len(entries))
        return transcribe_on_ray(
            entries, actors=self.actors, rows_per_call=self.rows_per_call or 4 * options.batch_size,
            actor_args={"model": self.model, "dtype": self.dtype, "options": options, "quantize": self.quantize,
                        "compile_cache": self.compile_cache},
            cpus_per_actor=self.cpus_per_actor, gpus_per_actor=self.gpus_per_actor, resources=self.resources)
