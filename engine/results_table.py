"""`--formats parquet`: a run's records as one Parquet file, `results.parquet`, written at the
end of the run from results.jsonl (atomically: a temporary file renamed into place), for corpora
too big to browse as JSON. Needs pyarrow (the `data` extra).

Columns: the record's core fields typed (`path`, `text`, `language`, `duration_s`, `windows`,
`error`, `error_kind`), `segments` as a list of {start, end, text} structs, and `record`, the
whole record as JSON, so that nothing results.jsonl holds is lost (words, statistics, extras).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from .records import CORE_FIELDS
from .results import record_json

PARQUET = "results.parquet"


def schema():
    import pyarrow as pa

    segment = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])
    return pa.schema([("path", pa.string()), ("text", pa.string()), ("language", pa.string()),
                      ("duration_s", pa.float64()), ("windows", pa.int64()), ("error", pa.string()),
                      ("error_kind", pa.string()), ("segments", pa.list_(segment)), ("record", pa.string())])


def to_table(records: Sequence[Mapping]):
    """pyarrow Table [len(records) rows] of `schema()`."""
    import pyarrow as pa

    rows = [{**{k: r.get(k) for k in CORE_FIELDS},
             "segments": [{"start": s["start"], "end": s["end"], "text": s["text"]} for s in r.get("segments") or []],
             "record": record_json(r)} for r in records]
    return pa.Table.from_pylist(rows, schema=schema())


def check_available() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as err:
        raise ValueError(f"--formats parquet needs pyarrow: pip install 'whisper-nnx[data]' ({err})") from err


def write_parquet(out: Path, records: Sequence[Mapping]) -> Path:
    """`out`/results.parquet holding `records`, replaced atomically."""
    import pyarrow.parquet as pq

    target, tmp = out / PARQUET, out / (PARQUET + ".tmp")
    pq.write_table(to_table(records), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target
