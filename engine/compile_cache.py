"""JAX's persistent compilation cache, so a second run skips XLA compilation.

Every jitted piece (encoder, prefill and the decode loop per batch and prompt bucket, the
log-mel per batch) is compiled on first use; a cold start of tiny.en costs tens of seconds of
compilation on a CPU host and minutes for large models on a TPU pod. With the cache on, XLA's
executables are stored under a directory keyed by program, backend and versions, and a later
process loads them instead of compiling.

    enable_compilation_cache()            # default directory, see `cache_directory`
    enable_compilation_cache("/mnt/jax")  # shared across the hosts of a pod, for instance

Must be called before the first compilation that should be cached (JAX reads the settings at
each compile; entries compiled before the call are not stored).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import jax

ENV_DIRECTORY = "WHISPER_NNX_COMPILE_CACHE"
DISABLED = ("", "off", "none", "0")


def cache_directory() -> Optional[Path]:
    """WHISPER_NNX_COMPILE_CACHE (off/none/0/empty: no cache), else `<cache root>/jax-compile`."""
    value = os.environ.get(ENV_DIRECTORY)
    if value is not None:
        return None if value.strip().lower() in DISABLED else Path(value).expanduser()
    from .checkpoints.hub import cache_root
    return cache_root() / "jax-compile"


def enable_compilation_cache(directory: Union[str, Path, None] = None,
                             min_compile_seconds: float = 0.0) -> Optional[Path]:
    """Turn the cache on at `directory` (default `cache_directory()`); returns the directory used.

    `min_compile_seconds`: only programs that took at least this long to compile are stored
    (JAX's default is 1 s; the decode loop's small pieces compile faster than that but still
    add up, so everything is stored by default). Returns None when the cache is disabled.
    """
    if directory is not None and str(directory).strip().lower() in DISABLED:
        return None
    path = Path(directory).expanduser() if directory is not None else cache_directory()
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
