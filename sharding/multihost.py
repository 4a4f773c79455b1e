"""Several processes (hosts) running one program over one global mesh.

Every process runs the same jitted calls in the same order with the same global shapes; each
contributes its own rows of a batch and reads back its own rows of the result. Helpers here
keep that lockstep: agreeing on sizes (`global_max`), turning a host's rows into a slice of a
global array (`global_batch`) and taking its rows back out (`local_rows`). With one process
they reduce to plain device_put / device_get.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

ENV_COORDINATOR = "WHISPER_NNX_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "WHISPER_NNX_NUM_PROCESSES"
ENV_PROCESS_ID = "WHISPER_NNX_PROCESS_ID"


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> bool:
    """Start `jax.distributed` before any other JAX call. Returns True when multi-process.

    Explicit arguments win, then WHISPER_NNX_* variables; `auto=True` with neither lets JAX
    detect the cluster (TPU pod slices, SLURM, ...). Nothing given: one process, no-op. On CPU
    the collectives go over gloo (the local multi-process test harness).
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if coordinator is None and not auto:
        return False
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    return jax.process_count() > 1


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier called `name`."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process_block(count: int, processes: Optional[int] = None, index: Optional[int] = None) -> range:
    """Process `index`'s contiguous block of positions among `count` items, process 0 first
    (default: this run's process count and this process)."""
    processes = jax.process_count() if processes is None else processes
    index = jax.process_index() if index is None else index
    per = -(-count // processes)
    return range(min(index * per, count), min((index + 1) * per, count))


def global_max(value: int) -> int:
    """The largest `value` over all processes (every process must call this)."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.asarray([value], np.int64))))


def global_union(values: Sequence[int]) -> list[int]:
    """Sorted union of small non-negative ints over all processes (every process calls)."""
    if jax.process_count() == 1:
        return sorted(set(values))
    width = global_max(len(values))
    padded = np.full((width,), -1, np.int64)
    padded[:len(values)] = values
    gathered = multihost_utils.process_allgather(padded)
    return sorted({int(v) for v in np.ravel(gathered) if v >= 0})


def local_row_range(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows that this process's devices hold under `sharding`
    (batch-major). Raises if they are not one contiguous block."""
    blocks = sorted({(rows.start or 0, global_rows if rows.stop is None else rows.stop)
                     for rows, *_ in sharding.addressable_devices_indices_map((global_rows,)).values()})
    start, stop = blocks[0][0], max(b[1] for b in blocks)
    covered = sum(b - a for a, b in blocks)
    if covered != stop - start:
        raise ValueError(f"this process's rows {blocks} are not one contiguous block of the batch")
    return start, stop


def global_batch(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """This process's rows [b, ...] -> the global array [b * processes, ...] laid out by `sharding`."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(local))


def local_rows(tree, row_range: Optional[tuple[int, int]] = None):
    """Host numpy copy of `tree`; with several processes, only rows [start, stop) of each
    batch-major array (this process's rows, see `local_row_range`)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)

    def rows(x):
        full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return full if full.ndim == 0 or row_range is None else full[row_range[0]:row_range[1]]

    return jax.tree.map(rows, tree)
