"""docs/CLI.md is every flag of the command line, generated from the argparse parser by
tools/flag_reference.py: it must equal what the parser renders now, so a changed flag (name,
alias, default, help) comes with the regenerated reference."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("flag_reference", ROOT / "tools" / "flag_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_the_parsers_current_reference():
    generator = _generator()
    expected = generator.render()
    path = ROOT / "docs" / "CLI.md"
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    assert current == expected, (
        f"docs/CLI.md differs from the parser's flags: run `{generator.COMMAND}` and commit docs/CLI.md")


def test_the_reference_lists_every_flag_and_alias_with_its_default():
    """Every option string of every command is in the reference, and a flag's row holds its
    default (what the generator is for: nothing the parser accepts goes unlisted)."""
    from whisper_nnx.engine.cli import build_parser

    text = _generator().render()
    rows = {line.split(" | ")[0].strip("| `").split(" ")[0].replace("\\|", "|"): line
            for line in text.splitlines() if line.startswith("| `")}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in (parser, *sub.choices.values()):
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            for option in action.option_strings:
                assert f"`{option}" in text, option
    transcribe = rows["--output-dir"]
    assert "`-o`" in transcribe and "`--output_dir`" in transcribe and "`whisper-nnx-out`" in transcribe
    assert "| `8` |" in rows["--batch-size"]
    assert "`--no-condition-on-previous-text`" in rows["--condition-on-previous-text"]
    assert "--score-only" in rows and "--dtype" in rows  # eval's own flag; convert's


def _anchors(markdown: str) -> set[str]:
    """The heading anchors GitHub gives a Markdown file: lower case, punctuation dropped, spaces
    as dashes, a repeated heading suffixed -1, -2, ... (headings inside code blocks skipped)."""
    import re

    anchors: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{counts[slug]}" if slug in counts else slug)
        counts[slug] = counts.get(slug, 0) + 1
    return anchors


def test_links_in_the_docs_name_files_and_headings_that_exist():
    """README.md and docs/*.md link to each other, to their sections and to benchmarks/RESULTS.md
    entries (numbers are quoted with their record): every relative link names a file that exists
    and, with a #fragment into Markdown, a heading that file has."""
    import re

    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
                continue
            path, _, fragment = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif fragment and file.suffix == ".md" and fragment not in _anchors(file.read_text(encoding="utf-8")):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, "links to fix:\n" + "\n".join(broken)
