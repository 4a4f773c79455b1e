"""Where inputs live: local paths, or URLs of any protocol fsspec knows (`s3://`, `gs://`,
`https://`, `memory://`, `hf://`...). Object-storage protocols need their fsspec backend, the
`cloud` extra (s3fs, gcsfs); `AWS_ENDPOINT_URL` points s3fs at an S3-compatible server. `hf://`
(Hugging Face Hub repositories, `hf://datasets/OWNER/NAME[@REVISION]/PATH`) is huggingface_hub's
`HfFileSystem`, a base dependency; it reads HF_TOKEN (or `hf auth login`) for gated and private
repos and needs the Hub: with HF_HUB_OFFLINE=1 it fails (the input's record says so).

A URL whose path holds `*`, `?` or `[` (any protocol but http(s), where `?` starts a query) is a
glob pattern (`hf://datasets/OWNER/NAME/data/train-*.parquet`): `glob_urls` lists its matches.

Local paths go through the plain `open`, so nothing changes for them and fsspec is imported only
when a URL is used.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit


def is_url(name: str) -> bool:
    """`name` has a protocol (`s3://bucket/key`, `file:///x`), as opposed to a local path."""
    head, sep, _ = name.partition("://")
    return bool(sep) and head.replace("+", "").replace("-", "").isalnum()


REDACTED = "REDACTED"
# Query parameters that carry a credential: presigned S3 / GCS URLs, Azure SAS, API keys and tokens.
_SECRET_PARAMS = {"x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "sig",
                  "x-goog-signature", "x-goog-credential", "googleaccessid", "awsaccesskeyid", "token",
                  "access_token", "security-token", "key", "api_key", "apikey", "password", "secret"}
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")  # no trailing punctuation


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:  # user:password@host (a user alone may be a key too)
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{k}={REDACTED}" if sep and k.lower() in _SECRET_PARAMS else f"{k}{sep}{v}"
        for k, sep, v in (p.partition("=") for p in parts.query.split("&"))) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """`text` (a URL, or a message naming URLs) with the credentials in its URLs replaced by
    REDACTED: a `user:password@` userinfo and the values of credential query parameters
    (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, Signature, sig, token...); scheme,
    host, path and the other parameters are kept. What records, logs and output names show of a
    URL; the entry keeps the real URL to read its audio. Local paths are returned as they are."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: _redact_url(m.group(0)), text)


def parent(name: str) -> str:
    return posixpath.dirname(name.rstrip("/")) if is_url(name) else os.path.dirname(os.path.abspath(name))


def join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if is_url(folder) else os.path.join(folder, name)


def filesystem(url: str):
    """(fsspec filesystem, path within it) of a URL."""
    try:
        import fsspec
    except ImportError as err:  # pragma: no cover - fsspec comes with huggingface-hub
        raise RuntimeError(f"{url}: reading URLs needs fsspec (pip install 'whisper-nnx[cloud]')") from err
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise RuntimeError(f"{url}: {err} (object storage needs pip install 'whisper-nnx[cloud]')") from err


def open_binary(name: str) -> BinaryIO:
    """`name` opened for reading bytes, a local path or a URL (FileNotFoundError if absent)."""
    if not is_url(name):
        return open(name, "rb")
    fs, path = filesystem(name)
    return fs.open(path, "rb")


def read_text(name: str, errors: str = "strict") -> str:
    """The file as UTF-8 text (`errors`: what undecodable bytes become, as for `bytes.decode`)."""
    with open_binary(name) as handle:
        return handle.read().decode("utf-8", errors)


def is_dir(name: str) -> bool:
    if not is_url(name):
        return os.path.isdir(name)
    fs, path = filesystem(name)
    return fs.isdir(path)


def is_file(name: str) -> bool:
    if not is_url(name):
        return os.path.isfile(name)
    fs, path = filesystem(name)
    return fs.isfile(path)


def walk_files(folder: str) -> list[str]:
    """Every file under `folder`, recursively, sorted (local paths in path order, as `Path.rglob`
    sorts them; URLs keep their protocol)."""
    if not is_url(folder):
        return [str(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()]
    fs, path = filesystem(folder)
    protocol = folder.split("://", 1)[0]
    return sorted(f"{protocol}://{p}" for p in fs.find(path))


_GLOB = re.compile(r"[*?\[]")


_QUERY = re.compile(r"\?[^?]*=.*$")  # "?name=value...": a URL's query


def is_glob_url(name: str) -> bool:
    """`name` is a URL whose path is a glob pattern (`*`, `?`, `[`); never an http(s) URL, where
    `?` starts the query."""
    if not is_url(name):
        return False
    protocol, _, path = name.partition("://")
    path = _QUERY.sub("", path)  # a query (`?versionId=...`, a signed URL's) is not a pattern
    return protocol.lower() not in ("http", "https") and bool(_GLOB.search(path))


def glob_urls(pattern: str) -> list[str]:
    """The files and folders matching a glob URL, sorted, as URLs of its protocol (`**` crosses
    folders, as in fsspec's `glob`)."""
    fs, path = filesystem(pattern)
    protocol = pattern.split("://", 1)[0]
    return sorted(f"{protocol}://{p}" for p in fs.glob(path))
