"""The in-memory multipart parser against bodies built by httpx (a real client's encoder)."""

from __future__ import annotations

import httpx
import pytest

from labelaudit.serving.http.body import BadRequest
from labelaudit.serving.http.multipart import parse_form


def encoded(files, data=None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def test_files_and_text_fields_come_back_byte_for_byte():
    blob = bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n"  # CRLFs and dashes inside a file
    body, ctype = encoded(
        [("files", ("a.png", blob, "image/png")), ("files", ("b.png", b"", "image/png"))],
        {"top_k": "5", "note": "naïve"},
    )
    form = parse_form(body, ctype, max_parts=10)
    assert [(f.filename, f.data) for f in form.files("files")] == [("a.png", blob), ("b.png", b"")]
    assert form.text("top_k") == "5" and form.text("note") == "naïve" and form.text("missing") is None
    assert form.files("top_k") == []  # a text field is not a file


def test_limits_and_malformed_bodies_are_4xx():
    body, ctype = encoded([("files", ("a.png", b"x"))] * 3)
    with pytest.raises(BadRequest) as too_many:
        parse_form(body, ctype, max_parts=2)
    assert too_many.value.status_code == 413 and too_many.value.reason == "too_many_parts"
    with pytest.raises(BadRequest, match="boundary"):
        parse_form(body, "multipart/form-data", max_parts=10)
    body, ctype = encoded([("files", ("a.png", b"x"))], {"top_k": "3"})
    with pytest.raises(BadRequest) as not_utf8:
        parse_form(body.replace(b"\r\n\r\n3\r\n", b"\r\n\r\n\xff\r\n"), ctype, max_parts=10).text("top_k")
    assert not_utf8.value.reason == "bad_multipart"
