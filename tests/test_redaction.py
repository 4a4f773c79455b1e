"""URLs with credentials (presigned queries, `user:pass@`) are shown REDACTED in records, logs and output names,
while the entry keeps the real URL to read its audio, and a resume still finds the records it wrote."""

from __future__ import annotations

import json

import pytest

from whisper_nnx.engine import records
from whisper_nnx.engine.entry import entry_key, record_key
from whisper_nnx.engine.run import BulkRun
from whisper_nnx.engine.sink import ResultSink
from whisper_nnx.engine.storage import redact

SIGNED = ("https://bucket.s3.amazonaws.com/calls/a.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIAEXAMPLE%2F20261206%2Fus-east-1&X-Amz-Date=20261206T000000Z&X-Amz-Expires=3600"
          "&X-Amz-Security-Token=SESSIONTOKEN&X-Amz-Signature=deadbeefcafe")
SECRETS = ("AKIAEXAMPLE", "SESSIONTOKEN", "deadbeefcafe", "hunter2", "sigvalue", "gsig")


@pytest.mark.parametrize("url,shown", [
    (SIGNED, "https://bucket.s3.amazonaws.com/calls/a.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED"
             "&X-Amz-Date=20261206T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"),
    ("https://me:hunter2@example.com/a.flac", "https://REDACTED@example.com/a.flac"),
    ("https://acct.blob.core.windows.net/c/a.wav?sv=2024&sig=sigvalue", "https://acct.blob.core.windows.net/c/a.wav?sv=2024&sig=REDACTED"),
    ("https://h/a.wav?Expires=1&Signature=gsig&Key-Pair-Id=K", "https://h/a.wav?Expires=1&Signature=REDACTED&Key-Pair-Id=K"),
    ("s3://bucket/a.wav", "s3://bucket/a.wav"),
    ("https://h/a.wav?lang=en", "https://h/a.wav?lang=en"),
    ("relative/a b.wav", "relative/a b.wav"),
    ("https://h/a.wav?sig=sigvalue: not found (404)", "https://h/a.wav?sig=REDACTED: not found (404)"),
])
def test_redact_keeps_scheme_host_path_and_hides_secrets(url, shown):
    assert redact(url) == shown and redact(shown) == shown


class _Echo:
    """A producer without a model: each entry's text is 'hi'; the entry it was given is kept."""

    def __init__(self):
        self.asked: list[str] = []

    def start(self, options) -> dict:
        return {"model": "stand-in"}

    def records(self, entries, options):
        for entry in entries:
            self.asked.append(entry.name)
            yield records.transcript(entry.name, text="hi", language="en", duration_s=1.0,
                                     segments=[{"start": 0.0, "end": 1.0, "text": "hi"}], windows=1)


def _assert_clean(text: str) -> None:
    assert not [s for s in SECRETS if s in text], text


def test_records_names_and_echo_are_redacted_and_a_resume_matches(tmp_path):
    # memory:// (no network: the run asks whether its inputs are folders); https URLs are redacted alike
    url, userinfo = SIGNED.replace("https://", "memory://"), "memory://me:hunter2@example.com/b.flac"
    out = tmp_path / "out"
    first = _Echo()
    outcome = BulkRun([url, userinfo], out, producer=first, formats=("txt", "json"),
                      progress=False).run()
    assert outcome.exit_code == 0
    assert first.asked == [url, userinfo]  # the real URLs read the audio
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in lines] == [redact(url), redact(userinfo)]
    for path in out.rglob("*"):
        _assert_clean(str(path.relative_to(out)))
        if path.is_file():
            _assert_clean(path.read_text())
    assert lines[0]["files"] == ["a.txt", "a.json"]  # the URL's query left out of the name
    assert record_key(lines[0]) == entry_key(url)
    again = _Echo()
    outcome = BulkRun([url, userinfo], out, producer=again, formats=("txt", "json"), resume=True,
                      progress=False).run()
    assert again.asked == [] and outcome.summary["skipped_already_done"] == 2


def test_an_error_naming_the_url_is_redacted_in_the_record_and_the_log(tmp_path, caplog):
    shown = []
    with ResultSink(tmp_path, ("txt",), echo=shown.append) as sink:
        sink.write(records.failure(SIGNED, f"{SIGNED}: HTTP 403 Forbidden", records.INPUT))
    text = (tmp_path / "results.jsonl").read_text()
    _assert_clean(text)
    _assert_clean(json.dumps(shown))
    assert json.loads(text)["error"] == f"{redact(SIGNED)}: HTTP 403 Forbidden"
