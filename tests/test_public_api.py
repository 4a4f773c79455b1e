"""The package's public surface: `whisper_nnx.engine` names it, imports it lazily, and no module
of the engine or the sharding package imports a module that imports it back."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import whisper_nnx.engine as engine

PUBLIC = {
    "Transcriber": "transcribe", "TranscribeOptions": "transcribe", "transcribe": "transcribe",
    "DecodeOptions": "decode.options", "load_audio": "audio", "write_outputs": "writers", "FORMATS": "writers",
    **{name: "decode.options" for name in ("SearchOptions", "FallbackOptions", "RuleOptions", "PromptOptions")},
    "LongFormOptions": "longform", "VadOptions": "vad", "ReadOptions": "options",
    "Transcript": "records", "BulkRun": "run",
}
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"engine": "whisper_nnx.engine", "sharding": "whisper_nnx.sharding"}


def _fresh(code: str) -> str:
    """stdout of `code` run in a new interpreter (nothing imported yet)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_exports_the_public_names_from_their_modules():
    assert set(engine.__all__) == set(PUBLIC)
    for name, module in PUBLIC.items():
        assert getattr(engine, name) is getattr(importlib.import_module(f"whisper_nnx.engine.{module}"), name)
    transcribe_module = sys.modules["whisper_nnx.engine.transcribe"]
    assert engine.Transcriber is transcribe_module.Transcriber
    assert engine.transcribe is transcribe_module.transcribe  # the function, not the submodule
    assert callable(engine.transcribe) and "json" in engine.FORMATS
    assert set(PUBLIC) <= set(dir(engine))
    assert not hasattr(engine, "no_such_name")


def test_importing_the_package_does_not_import_jax():
    out = _fresh("import sys, whisper_nnx.engine as e; print(sorted(e.__all__)); "
                 "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'av')))")
    names, heavy = out.splitlines()
    assert names == str(sorted(PUBLIC))
    assert heavy == "[]"


@pytest.mark.slow  # a fresh interpreter importing the model code (seconds)
def test_transcribe_stays_the_function_whichever_is_imported_first():
    """Importing the submodule `transcribe` (directly, or through another name) does not replace
    the exported function of the same name."""
    out = _fresh("import whisper_nnx.engine.transcribe as m, whisper_nnx.engine as e; "
                 "from whisper_nnx.engine import vad; "
                 "print(e.transcribe is sys.modules['whisper_nnx.engine.transcribe'].transcribe, "
                 "e.Transcriber is sys.modules['whisper_nnx.engine.transcribe'].Transcriber, "
                 "e.vad.__name__)".replace("import whisper", "import sys, whisper", 1))
    assert out.split() == ["True", "True", "whisper_nnx.engine.vad"]


def _imports(package_dir: str, package: str) -> dict[str, set[str]]:
    """Module -> the modules of this project it imports (anywhere in it, functions included)."""
    def dotted(f: Path) -> str:
        parts = f.relative_to(ROOT / package_dir).with_suffix("").parts
        return ".".join((package, *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:])))

    modules = {dotted(f): f for f in sorted((ROOT / package_dir).rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        here = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = {f"{base}.{alias.name}" for alias in node.names}
                found |= names if names & set(modules) else {base}
        graph[name] = found
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    graph: dict[str, set[str]] = {}
    for package_dir, package in PACKAGES.items():
        graph.update(_imports(package_dir, package))
    graph = {name: {dep for dep in deps if dep in graph and dep != name} for name, deps in graph.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
        return False

    cycles = sorted((a, b) for a, deps in graph.items() for b in deps if reaches(b, a))
    assert not cycles, cycles


def test_modules_and_functions_stay_small():
    """Issue 24's bound: no engine or sharding module over 450 lines, no function over 60; the CLI
    module (flags mapped onto options and a run) under 300."""
    too_long, modules = [], []
    for package_dir in PACKAGES:
        for path in sorted((ROOT / package_dir).rglob("*.py")):
            text = path.read_text()
            if len(text.splitlines()) > 450:
                modules.append((str(path.relative_to(ROOT)), len(text.splitlines())))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 60:
                        too_long.append((str(path.relative_to(ROOT)), node.name, length))
    assert not modules, modules
    assert not too_long, too_long
    assert len((ROOT / "engine" / "cli.py").read_text().splitlines()) < 300
