"""`--formats parquet`: a run's records as one Parquet file, `results.parquet`, written at the
end of the run from results.jsonl (atomically: a temporary file renamed into place), for corpora
too big to browse as JSON. Needs pyarrow (the `data` extra). The records stream in: they are
written in row groups of at most `ROW_GROUP_RECORDS` records (fewer once their JSON passes
`ROW_GROUP_BYTES`), so memory does not grow with the run.

Columns: the record's core fields typed (`path`, `text`, `language`, `duration_s`, `windows`,
`error`, `error_kind`), `segments` as a list of {start, end, text} structs, and `record`, the
whole record as JSON, so that nothing results.jsonl holds is lost (words, statistics, extras).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from .records import CORE_FIELDS
from .results import record_json

PARQUET = "results.parquet"
ROW_GROUP_RECORDS = 50_000  # records per row group at most
ROW_GROUP_BYTES = 64 << 20  # ... and a row group ends once its records' JSON passes this


def schema():
    import pyarrow as pa

    segment = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])
    return pa.schema([("path", pa.string()), ("text", pa.string()), ("language", pa.string()),
                      ("duration_s", pa.float64()), ("windows", pa.int64()), ("error", pa.string()),
                      ("error_kind", pa.string()), ("segments", pa.list_(segment)), ("record", pa.string())])


def to_table(records: Sequence[Mapping]):
    """pyarrow Table [len(records) rows] of `schema()`."""
    import pyarrow as pa

    return pa.Table.from_pylist([_row(r) for r in records], schema=schema())


def _row(record: Mapping) -> dict:
    return {**{k: record.get(k) for k in CORE_FIELDS},
            "segments": [{"start": s["start"], "end": s["end"], "text": s["text"]}
                         for s in record.get("segments") or []],
            "record": record_json(record)}


def _groups(records: Iterable[Mapping], max_records: int, max_bytes: int) -> Iterator[list[dict]]:
    """`records` as table rows, in lists of at most `max_records` (or fewer, of about `max_bytes`
    of record JSON)."""
    group, size = [], 0
    for record in records:
        row = _row(record)
        group.append(row)
        size += len(row["record"])
        if len(group) >= max_records or size >= max_bytes:
            yield group
            group, size = [], 0
    if group:
        yield group


def check_available() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as err:
        raise ValueError(f"--formats parquet needs pyarrow: pip install 'whisper-nnx[data]' ({err})") from err


def write_parquet(out: Path, records: Iterable[Mapping], max_records: Optional[int] = None,
                  max_bytes: Optional[int] = None) -> Path:
    """`out`/results.parquet holding `records` (any iterable: read one at a time, written a row
    group at a time; groups of `max_records` / `max_bytes`, default `ROW_GROUP_RECORDS` /
    `ROW_GROUP_BYTES`), replaced atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    max_records = max_records or ROW_GROUP_RECORDS
    max_bytes = max_bytes or ROW_GROUP_BYTES

    target, tmp = out / PARQUET, out / (PARQUET + ".tmp")
    table_schema = schema()
    try:
        with pq.ParquetWriter(tmp, table_schema) as writer:
            for group in _groups(records, max_records, max_bytes):
                writer.write_table(pa.Table.from_pylist(group, schema=table_schema), row_group_size=len(group))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
