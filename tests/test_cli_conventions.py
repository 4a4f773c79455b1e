"""What users bring from openai-whisper and other tools: --version and __version__, a LICENSE,
--help with defaults, the flag spellings --output_dir/-o and --output_format/-f (with `all`),
--device, and summary.json's speed under eval's name (rtfx: audio seconds per wall second)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import whisper_nnx.engine as engine
from whisper_nnx.engine import cli, cli_process
from whisper_nnx.engine.progress import merge_summaries, write_summary
from whisper_nnx.engine.writers import FORMATS

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("JAX_PLATFORMS", None)
    return subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _help(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # argparse wraps at the terminal's width, also at hyphens
    with pytest.raises(SystemExit) as done:
        cli.main([*args, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


# --- version and license ----------------------------------------------------------------------


def test_version_is_the_installed_distributions(tmp_path):
    assert engine.__version__ == metadata.version("whisper-nnx") == PYPROJECT["version"]
    assert "__version__" in dir(engine) and "__version__" not in engine.__all__
    done = _cli("--version", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"whisper-nnx {PYPROJECT['version']}\n"


def test_version_without_metadata_falls_back_to_pyproject_then_unknown(monkeypatch, tmp_path):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert engine._version() == PYPROJECT["version"]  # a source tree: its pyproject.toml
    monkeypatch.setattr(engine, "__file__", str(tmp_path / "engine" / "__init__.py"))  # no pyproject beside it
    assert engine._version() == "0+unknown"


def test_license_is_mit_as_pyproject_says():
    text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["license"] == {"text": "MIT"}
    assert text.startswith("MIT License\n") and "whisper-nnx authors" in text
    assert "Permission is hereby granted, free of charge" in text


# --- help ---------------------------------------------------------------------------------------


def test_help_shows_the_defaults(capsys, monkeypatch):
    text = " ".join(_help(capsys, monkeypatch, "transcribe").split())
    for shown in ("--output_dir DIR where results.jsonl", "(default: whisper-nnx-out)", "(default: json,txt)",
                  "(default: 8)", "(default: 0.0)", "(default: transcribe)", "float32 until it is run",
                  "(default: 2.4)", "(default: dp+tp)", "(default: True)", "(default: auto)"):
        assert shown in text, shown
    # nothing to show (None, a switch's False) or the help already says it: no "(default: ...)"
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "candidates (default 1) --" in text and "(default 5; off:" in text
    assert text.count("(default") >= 30
    assert "(default: keep)" in _help(capsys, monkeypatch, "convert")


# --- openai-whisper's spellings -----------------------------------------------------------------


@pytest.mark.parametrize("spelling", [("--output-dir", "--formats"), ("--output_dir", "--output_format"),
                                      ("-o", "-f"), ("--output_dir", "--output-format")])
def test_output_flag_aliases_mean_the_same(spelling):
    out_flag, format_flag = spelling
    args = cli.build_parser().parse_args(["transcribe", "a.wav", out_flag, "somewhere", format_flag, "srt,vtt"])
    assert args.output_dir == "somewhere" and args.formats == "srt,vtt"
    assert cli._formats(args) == ("srt", "vtt")


@pytest.mark.parametrize("given, expected", [
    ("all", FORMATS),
    ("all,parquet", (*FORMATS, "parquet")),
    ("srt, all", ("srt", *(f for f in FORMATS if f != "srt"))),
    ("json,json,txt,", ("json", "txt")),
])
def test_formats_all_is_every_text_format(given, expected):
    assert FORMATS == ("json", "txt", "srt", "vtt", "tsv")
    args = cli.build_parser().parse_args(["transcribe", "a.wav", "-f", given])
    assert cli._formats(args) == expected


def test_dry_run_accepts_all(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    assert cli.main(["transcribe", str(data_dir / "sample_joe.flac"), "-o", str(out), "-f", "all", "--dry-run"]) == 0
    assert "1 " in capsys.readouterr().out and not out.exists()


# --- --device -----------------------------------------------------------------------------------


@pytest.mark.parametrize("jax_first", [False, True])
def test_device_cpu_selects_the_jax_platform(jax_first):
    """Before JAX starts a backend: JAX_PLATFORMS (also when JAX is imported later) and, when it
    is imported already, its config; then JAX runs on the CPU only."""
    code = (("import jax\n" if jax_first else "")
            + "import os, sys\nfrom whisper_nnx.engine import cli_process\ncli_process.select_device('cpu')\nimport jax\n"
            + "cli_process.check_device('cpu')\n"
            + "print(os.environ['JAX_PLATFORMS'], jax.config.jax_platforms, {d.platform for d in jax.devices()})\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cpu", "cpu", "{'cpu'}"]
    assert cli_process.PLATFORMS == {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}


def test_device_that_jax_cannot_use_is_a_usage_error():
    """A platform JAX has no backend for here: one clear error naming the flag and what to install."""
    code = ("from whisper_nnx.engine import cli, cli_process\ncli_process.select_device('tpu')\n"
            "try:\n    cli_process.check_device('tpu')\nexcept cli.UsageError as err:\n    print(err)\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("--device tpu: JAX cannot use a tpu here (") and "whisper-nnx[tpu]" in line, line
    assert "set JAX_PLATFORMS=''" not in line


@pytest.mark.slow
def test_device_unavailable_fails_before_the_model_loads(tmp_path, data_dir):
    out = tmp_path / "out"
    done = _cli("transcribe", str(data_dir / "sample_joe.flac"), "--device", "tpu", "-o", str(out),
                "--model", str(tmp_path / "no-such-model"), cwd=tmp_path)
    assert done.returncode == cli.EXIT_USAGE, done.stderr
    assert "whisper-nnx: error: --device tpu: JAX cannot use a tpu here" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.slow
def test_o_f_all_device_cpu_writes_every_format_and_rtfx(tmp_path, data_dir):
    """`-o DIR -f all --device cpu`: every text format of the input in DIR, and summary.json's
    speed as `rtfx` = audio seconds / wall seconds."""
    out = tmp_path / "out"
    done = _cli("transcribe", str(data_dir / "sample_joe.flac"), "-o", str(out), "-f", "all", "--device", "cpu",
                "--beam-size", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("sample_joe")) == sorted(
        f"sample_joe.{f}" for f in FORMATS)
    assert "quick brown fox" in (out / "sample_joe.txt").read_text().lower()
    assert "-->" in (out / "sample_joe.srt").read_text() and (out / "sample_joe.vtt").read_text().startswith("WEBVTT")
    record = json.loads((out / "results.jsonl").read_text())
    assert record["error"] is None and sorted(record["files"]) == sorted(f"sample_joe.{f}" for f in FORMATS)
    assert record["dtype"] == "float32"  # --dtype auto (the default), resolved on a CPU
    summary = json.loads((out / "summary.json").read_text())
    assert "real_time_factor" not in summary and summary["files"] == 1
    assert summary["rtfx"] == pytest.approx(summary["audio_hours"] * 3600 / summary["wall_s"], rel=0.01)
    assert f"({summary['rtfx']}x real time)" in done.stderr


def test_auto_defaults_follow_the_machine():
    args = cli.build_parser().parse_args(["transcribe", "x.wav"])
    assert args.dtype == "auto" and args.audio_workers == len(os.sched_getaffinity(0))
    assert cli.build_parser().parse_args(["transcribe", "x.wav", "--audio-workers", "3"]).audio_workers == 3
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["transcribe", "x.wav", "--audio-workers", bad])


# --- summary.json -------------------------------------------------------------------------------


def test_merged_summary_reports_rtfx(tmp_path):
    """Per-process summaries merge into one whose rtfx is all the audio over the longest wall time."""
    for index, (hours, wall) in enumerate([(0.5, 600.0), (0.25, 900.0)]):
        write_summary(tmp_path, {"files": 2, "errors": 0, "audio_hours": hours, "wall_s": wall,
                                 "rtfx": round(hours * 3600 / wall, 3), "skipped_already_done": 0},
                      f"summary.process-{index}.json")
    total = merge_summaries(tmp_path)
    assert total == json.loads((tmp_path / "summary.json").read_text())
    assert total["audio_hours"] == 0.75 and total["wall_s"] == 900.0 and total["files"] == 4
    assert total["rtfx"] == 3.0 and "real_time_factor" not in total  # 2700 s of audio in 900 s
