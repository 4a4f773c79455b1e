"""Helpers for tests that run the CLI as a subprocess and kill it part-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path


def cli_environment(cache: Path) -> dict[str, str]:
    """The subprocesses' environment: offline, and one JAX compilation cache in `cache`."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def complete_records(results: Path) -> list[dict]:
    """The records of the lines a running process has finished (ended by a newline)."""
    if not results.exists():
        return []
    out = []
    for line in results.read_bytes().split(b"\n")[:-1]:
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return out


def kill_after_records(proc: subprocess.Popen, results: Path, count: int, timeout: float) -> bool:
    """SIGKILL `proc`'s process group once `results` holds `count` complete records (or after
    `timeout` s); True when it was still running then (so the kill interrupted it)."""
    deadline = time.monotonic() + timeout
    try:
        while len(complete_records(results)) < count and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        running = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return running
