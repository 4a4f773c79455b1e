"""What the CLI sets up in its own process before a run: the JAX platform --device names, and
how log lines read (plain "whisper-nnx: warning: ..." lines; absl's prefixes with --verbose)."""

from __future__ import annotations

import logging as std_logging
import os
import sys
from typing import Optional

from absl import flags, logging

from .run import UsageError

# --device -> the JAX platform (JAX_PLATFORMS); gpu is NVIDIA's (the `cuda` extra's jax[cuda13])
PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}
_DEVICE_HINTS = {"gpu": "install JAX's CUDA build (pip install 'whisper-nnx[cuda]') on a host with an NVIDIA GPU",
                 "tpu": "install JAX's TPU build (pip install 'whisper-nnx[tpu]') on a TPU VM"}


def select_device(device: Optional[str]) -> None:
    """--device: make JAX use only that platform. Before JAX starts a backend: JAX_PLATFORMS
    (read when JAX is imported; Ray's actors get it too) and, if JAX is imported already, its
    config."""
    if device is None:
        return
    os.environ["JAX_PLATFORMS"] = PLATFORMS[device]
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_platforms", PLATFORMS[device])


def check_device(device: Optional[str]) -> None:
    """--device: JAX runs on that platform, else a UsageError that says what to install."""
    if device is None:
        return
    import jax

    try:
        platform = jax.devices()[0].platform
    except Exception as err:  # noqa: BLE001 - JAX's backend errors are RuntimeErrors, asserts, ...
        reason = (str(err).strip().splitlines() or [f"no {device} is visible"])[0].split(" (set JAX_PLATFORMS")[0]
        raise UsageError(f"--device {device}: JAX cannot use a {device} here ({reason}); "
                         f"{_DEVICE_HINTS.get(device, 'check the JAX installation')}") from None
    if platform != device:
        raise UsageError(f"--device {device}: JAX already runs on {platform} in this process")



class PlainLogLines(std_logging.Formatter):
    """A log record as the CLI's own messages read: "whisper-nnx: warning: ..." (its level in
    lower case), then its traceback when it has one."""

    def format(self, record: std_logging.LogRecord) -> str:
        line = f"whisper-nnx: {record.levelname.lower()}: {record.getMessage()}"
        return line + "\n" + self.formatException(record.exc_info) if record.exc_info else line


def configure_logging(verbose: bool) -> None:
    """Warnings and errors only, unless `verbose`: JAX's backend probing ("Unable to initialize
    backend 'tpu'") and the hub's messages are INFO lines a plain run does not show. The lines
    it shows are plain (`PlainLogLines`); absl's prefix (level, time, thread, source line) comes
    with `verbose`."""
    flags.FLAGS.mark_as_parsed()  # absl logging without absl's flag parsing (argparse owns argv)
    logging.use_absl_handler()
    logging.get_absl_handler().setFormatter(logging.PythonFormatter() if verbose else PlainLogLines())
    logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    level = std_logging.INFO if verbose else std_logging.WARNING
    for name in ("", "jax", "jax._src.xla_bridge", "huggingface_hub"):  # "": the root logger
        std_logging.getLogger(name).setLevel(level)
