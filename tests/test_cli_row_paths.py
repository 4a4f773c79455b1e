"""`--follow-row-paths` through the CLI (issue 25): a dataset row naming an absolute path, a path
through `..` or a URL is read only when the flag is given; without it that row's record is an
input error naming the flag, and the dataset's other rows are transcribed. No model: a stand-in
producer decodes each entry's audio and reports what it decoded."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("datasets")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from dataset_fixtures import CLIPS, CORPUS  # noqa: E402

from whisper_nnx.engine import cli, records  # noqa: E402
from whisper_nnx.engine.audio import AudioDecodeError, load_audio  # noqa: E402

CLIP = CORPUS / CLIPS[0]


def _digest(samples: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(samples).tobytes()).hexdigest()


class _Decoding:
    """Each entry decoded as the engine would (`entry.source()`); its record's text names the
    samples it decoded to, or its record is the input error the decoder raised."""

    def start(self, options) -> dict:
        return {"model": "stand-in"}

    def records(self, entries, options):
        for entry in entries:
            try:
                samples = load_audio(entry.source())
            except AudioDecodeError as err:
                yield records.failure(entry.name, str(err), records.INPUT)
                continue
            yield records.transcript(entry.name, text=f"{len(samples)} {_digest(samples)}", language="en",
                                     duration_s=len(samples) / 16000, segments=[], windows=1)


def _dataset(tmp_path, url_root: str) -> tuple[str, list[str]]:
    import fsspec

    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    for path in (data / "audio" / "a.flac", tmp_path / "outside.flac"):
        path.write_bytes(CLIP.read_bytes())
    fsspec.filesystem("memory").pipe(f"/{url_root}/a.flac", CLIP.read_bytes())
    paths = ["audio/a.flac", str(tmp_path / "outside.flac"), "../outside.flac", f"memory://{url_root}/a.flac"]
    table = data / "rows.parquet"
    pq.write_table(pa.table({"audio": pa.array([{"bytes": None, "path": p} for p in paths],
                                               pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}), table)
    return str(table), [f"{table}:{i}" for i in range(len(paths))]


def _run(table: str, out, *flags: str) -> tuple[int, list[dict]]:
    code = cli.main(["transcribe", table, "--output-dir", str(out), "--formats", "txt", "--no-progress", "--quiet",
                     "--skip-non-speech", "off", *flags])
    lines = (out / "results.jsonl").read_bytes().split(b"\n")
    return code, [json.loads(line) for line in lines if line]


def test_follow_row_paths_reaches_the_dataset_reader_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_producer", lambda args: _Decoding())
    table, names = _dataset(tmp_path, f"cli-rows-{tmp_path.name}")
    clip = load_audio(CLIP)
    decoded = f"{len(clip)} {_digest(clip)}"

    code, found = _run(table, tmp_path / "without")
    assert code == 3  # the run finished; some rows are input errors
    by_name = {r["path"]: r for r in found}
    assert sorted(by_name) == sorted(names) and len(found) == 4
    assert by_name[names[0]]["error"] is None and by_name[names[0]]["text"] == decoded  # inside the dataset
    for name in names[1:]:
        assert by_name[name]["error_kind"] == "input" and by_name[name]["text"] == ""
        assert "--follow-row-paths" in by_name[name]["error"]

    code, found = _run(table, tmp_path / "with", "--follow-row-paths")
    assert code == 0
    assert sorted(r["path"] for r in found) == sorted(names)
    assert [(r["error"], r["text"]) for r in found] == [(None, decoded)] * 4
    assert all(r["duration_s"] == pytest.approx(len(clip) / 16000) for r in found)
