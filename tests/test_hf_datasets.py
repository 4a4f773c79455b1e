"""Hugging Face datasets by hub id: `hf://datasets/OWNER/NAME/...` inputs (a Parquet file, a
folder, a glob such as `data/train-*.parquet`).

No hub is reachable here, and huggingface_hub's `HfFileSystem` has no offline mode (it asks the
Hub about the repo before any listing or read), so these tests check, each against a real
implementation: that `hf://` URLs go to `HfFileSystem` and, offline, come back as one error
entry that says so; and the listing, globbing and reading of a dataset repo's layout
(`README.md`, `.gitattributes`, `data/<split>-NNNNN-of-NNNNN.parquet` as `datasets` writes them)
through fsspec's own local filesystem (`file://` URLs), which runs the same code paths as any
other protocol. Not covered: HfFileSystem's own requests (listing, ranges, auth, `@revision`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("datasets")

from dataset_fixtures import CLIPS, CORPUS, texts, write_parquet  # noqa: E402
from huggingface_hub import HfFileSystem  # noqa: E402

from whisper_nnx.engine import storage  # noqa: E402
from whisper_nnx.engine.inputs import expand_inputs  # noqa: E402

SPLITS = {"data/train-00000-of-00002.parquet": CLIPS[:2], "data/train-00001-of-00002.parquet": CLIPS[2:],
          "data/test-00000-of-00001.parquet": CLIPS[:1]}


def _bytes(entry) -> bytes:
    with entry.opener() as handle:
        return handle.read()


def _dataset_repo(root: Path) -> Path:
    """A dataset repo's files as the Hub holds them (Parquet written by `datasets`)."""
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n---\n# clips\n")
    (root / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    for name, clips in SPLITS.items():
        write_parquet(root / name, clips)
    return root


def _rows(url_of_file: str, clips) -> list[tuple[str, str, bytes]]:
    """(name, text, audio bytes) expected of a Parquet file's rows."""
    return [(f"{url_of_file}:{i}", texts()[c], (CORPUS / c).read_bytes()) for i, c in enumerate(clips)]


def _listed(entries) -> list[tuple[str, str, bytes]]:
    assert all(e.error is None for e in entries), [e.error for e in entries]
    return [(e.name, e.text, _bytes(e)) for e in entries]


def test_hf_urls_go_to_huggingface_hubs_filesystem():
    url = "hf://datasets/owner/speech/data/train-00000-of-00002.parquet"
    fs, path = storage.filesystem(url)
    assert isinstance(fs, HfFileSystem)
    assert path == "datasets/owner/speech/data/train-00000-of-00002.parquet"
    assert storage.is_url(url) and not storage.is_glob_url(url)
    assert storage.is_glob_url("hf://datasets/owner/speech/data/train-*.parquet")
    assert storage.is_glob_url("s3://bucket/audio/[ab]*.flac")
    assert not storage.is_glob_url("https://host/a.wav?X-Amz-Signature=abc")  # a query, not a pattern
    assert not storage.is_glob_url("s3://bucket/a.wav?versionId=3")  # a query in any protocol
    assert not storage.is_glob_url("memory://h/a.wav?X-Amz-Algorithm=A&X-Amz-Credential=K/2025/s3")
    assert storage.is_glob_url("s3://bucket/take-?.flac")  # a ? with no query after it is a pattern
    assert not storage.is_glob_url("data/train-*.parquet")  # local: the shell expands it


def test_offline_an_hf_pattern_is_one_error_entry_that_says_so():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: the suite never reaches the Hub
    url = "hf://datasets/owner/speech/data/train-*.parquet"
    (entry,) = expand_inputs([url])
    assert entry.name == url
    assert entry.error.startswith(f"{url}: cannot read it as an input list (OfflineModeIsEnabled: ")
    assert "offline mode is enabled" in entry.error and "\n" not in entry.error


def test_a_dataset_repo_folder_lists_its_parquet_rows_only(tmp_path):
    repo = _dataset_repo(tmp_path / "speech")
    base = f"file://{repo}"
    entries = list(expand_inputs([base]))
    expected = []
    for name in sorted(SPLITS):  # data/test-... before data/train-...
        expected += _rows(f"{base}/{name}", SPLITS[name])
    assert _listed(entries) == expected  # README.md and .gitattributes are not inputs


def test_a_split_pattern_lists_that_split_in_order(tmp_path):
    repo = _dataset_repo(tmp_path / "speech")
    base = f"file://{repo}"
    entries = list(expand_inputs([f"{base}/data/train-*.parquet"]))
    assert _listed(entries) == (_rows(f"{base}/data/train-00000-of-00002.parquet", CLIPS[:2])
                                + _rows(f"{base}/data/train-00001-of-00002.parquet", CLIPS[2:]))
    (none,) = expand_inputs([f"{base}/data/validation-*.parquet"])
    assert none.error == f"{base}/data/validation-*.parquet: no file matches the pattern"


def test_one_unreadable_match_is_one_error_entry_and_the_others_are_listed(tmp_path):
    repo = _dataset_repo(tmp_path / "speech")
    (repo / "data" / "train-00002-of-00003.parquet").write_bytes(b"not parquet at all")
    base = f"file://{repo}"
    entries = list(expand_inputs([f"{base}/data/train-*.parquet"]))
    bad = f"{base}/data/train-00002-of-00003.parquet"
    assert [e.name for e in entries] == [f"{base}/data/train-00000-of-00002.parquet:0",
                                         f"{base}/data/train-00000-of-00002.parquet:1",
                                         f"{base}/data/train-00001-of-00002.parquet:0", bad]
    assert entries[-1].error.startswith(f"{bad}: cannot read it as an input list (")
    assert _listed(entries[:3]) == (_rows(f"{base}/data/train-00000-of-00002.parquet", CLIPS[:2])
                                    + _rows(f"{base}/data/train-00001-of-00002.parquet", CLIPS[2:]))


@pytest.mark.slow  # a whole CLI process with the model
def test_the_cli_transcribes_a_split_pattern_as_it_does_the_clips(tmp_path):
    repo = _dataset_repo(tmp_path / "speech")
    pattern = f"file://{repo}/data/train-*.parquet"
    clips = [str(CORPUS / c) for c in CLIPS]  # the same audio as files, in the same run
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", pattern, *clips,
                           "--output-dir", str(out), "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    records = {r["path"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    rows = {f"file://{repo}/data/train-00000-of-00002.parquet:0": clips[0],
            f"file://{repo}/data/train-00000-of-00002.parquet:1": clips[1],
            f"file://{repo}/data/train-00001-of-00002.parquet:0": clips[2]}
    assert sorted(records) == sorted([*rows, *clips])
    for row, clip in rows.items():
        assert records[row]["error"] is None and records[row]["text"].strip()
        assert records[row]["text"] == records[clip]["text"], row
        assert records[row]["duration_s"] == records[clip]["duration_s"]
