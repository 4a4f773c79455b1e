"""Running test code on 8 simulated CPU devices.

XLA_FLAGS must be set before JAX starts, and the rest of the suite runs on one device, so
multi-device checks run as a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def eight_devices_env() -> dict[str, str]:
    """This process's environment with 8 simulated CPU devices."""
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def run_on_8_devices(code: str, timeout: int = 1200) -> str:
    """Run `code` (dedented) in a child Python with 8 devices; asserts it exits 0, returns stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=eight_devices_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout
