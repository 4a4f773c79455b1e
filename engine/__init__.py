"""whisper-nnx's engine: OpenAI Whisper in JAX + Flax NNX, for batched, sharded transcription.

    import whisper_nnx.engine as engine
    records = engine.transcribe(["talk.mp3"], model="tiny.en")      # one shot, or load once:
    options = engine.TranscribeOptions.from_kwargs(word_timestamps=True)
    records = engine.Transcriber("tiny.en").transcribe(paths, options)

The names below are the public surface (and `__version__`, the installed version); they are
imported on first use, so importing this package stays cheap (no JAX until a name is touched). The
pipeline stages sit here in flow order; the network is `model/`, weights come from `checkpoints/`,
a window is decoded by `decode/`:

- A file is read in `reading.py` (`AudioPrefetcher`: decoded by `audio.py` and its speech found
  on threads, ahead of the device and bounded in memory).
- A file becomes windows in `windows.py` (`WindowPipeline`: framing, floor, language, VAD),
  `spans.py` (clips, spans of speech, chunk plans, as `Span(first, end)` mel frames),
  `longform.py` (per-file jobs: which 30 s windows, which prompts) and `scheduler.py`
  (windows of many files packed into device batches).
- A window is decoded in `windows.py` (a batch of requests: mel, words), `decode/prompts.py`
  (a window's prompt), `decode/window_decoder.py` (temperature fallback, ranking),
  `decode/strategies.py` (greedy, sampling, beam search), `decode/programs.py` (the pure
  jitted encode / prefill / `lax.while_loop` programs over `model/whisper.py`) and
  `decode/generate.py` (the host runner: placement, fetch, shrinking; `Generator.programs`).
- A record is a `Transcript` built and serialized in `records.py` (tokens kept off what is
  written) and written by `sink.py` (`ResultSink`: each record's per-format files through
  `writers.py`, then its line of `results.jsonl`, whose rules of repair, resume and merge are
  `results.py`'s; `files.py`: atomic writes and output names). A whole run (lock, resume, the
  share of each process, duplicates, merge, summary, the bucket mirror of `remote_output.py`)
  is `run.py`'s `BulkRun`, which the CLI (`cli.py` maps flags onto it), `--ray` and Python share.
- A new output format is a formatter in `writers.py` and its name in `FORMATS`; a new decoding
  strategy one class in `decode/strategies.py` (a token strategy only writes `choose`), chosen per
  window in `window_decoder.strategy_for`; a new input source a new kind of entry in `inputs.py`
  (an `entry.Entry` whose `opener` gives a path or binary file object, which `audio.load_audio`
  decodes).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

# exported name -> the module (of this package) that defines it
_HOMES = {
    "Transcriber": "transcribe",
    "TranscribeOptions": "transcribe",
    "DecodeOptions": "decode.options",
    "SearchOptions": "decode.options",
    "FallbackOptions": "decode.options",
    "RuleOptions": "decode.options",
    "PromptOptions": "decode.options",
    "LongFormOptions": "longform",
    "VadOptions": "vad",
    "ReadOptions": "options",
    "transcribe": "transcribe",
    "load_audio": "audio",
    "write_outputs": "writers",
    "FORMATS": "writers",
    "Transcript": "records",
    "BulkRun": "run",
}
__all__ = sorted(_HOMES)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on first use
    from .audio import load_audio
    from .decode.options import DecodeOptions, FallbackOptions, PromptOptions, RuleOptions, SearchOptions
    from .longform import LongFormOptions
    from .options import ReadOptions
    from .records import Transcript
    from .run import BulkRun
    from .transcribe import TranscribeOptions, Transcriber, transcribe
    from .vad import VadOptions
    from .writers import FORMATS, write_outputs


def _version() -> str:
    """The installed distribution's version; from a source tree that is not installed, the
    version in its pyproject.toml; else "0+unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("whisper-nnx")
    except PackageNotFoundError:
        pass
    try:
        import tomllib
        from pathlib import Path

        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as file:
            project = tomllib.load(file)["project"]
        if project["name"] == "whisper-nnx":
            return str(project["version"])
    except (OSError, KeyError, ValueError):
        pass
    return "0+unknown"


def __getattr__(name: str):
    """Import an exported name's module on first use and keep the name here (`__version__`:
    read from the package metadata on first use)."""
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})


class _Package(types.ModuleType):
    """This package's module type. Importing a submodule binds it as an attribute of its
    package; the submodule `transcribe` would so replace the exported function `transcribe`
    (whichever was imported first). Exported names are kept: the module stays reachable as
    `sys.modules["whisper_nnx.engine.transcribe"]` and by `from whisper_nnx.engine.transcribe
    import ...`, as in openai-whisper, whose `whisper.transcribe` is the function too."""

    def __setattr__(self, name: str, value) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
