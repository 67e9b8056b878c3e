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


def _library_parts(body: bytes, boundary: bytes) -> list[tuple[bytes, bytes]]:
    """(headers, data) per part from python-multipart's streaming parser: the oracle for ours."""
    from python_multipart import MultipartParser

    parts: list[list[bytes]] = []
    header = {"field": b"", "value": b""}

    def header_end() -> None:
        parts[-1][0] += header["field"].lower() + b":" + header["value"] + b";"
        header.update(field=b"", value=b"")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": lambda: parts.append([b"", b""]),
            "on_part_data": lambda d, a, b: parts[-1].__setitem__(1, parts[-1][1] + d[a:b]),
            "on_header_field": lambda d, a, b: header.__setitem__("field", header["field"] + d[a:b]),
            "on_header_value": lambda d, a, b: header.__setitem__("value", header["value"] + d[a:b]),
            "on_header_end": header_end,
        },
    )
    parser.write(body)
    parser.finalize()
    return [(h, d) for h, d in parts]


@pytest.mark.parametrize("seed", range(20))
def test_every_part_comes_back_as_python_multipart_reads_it(seed):
    """Random forms (file contents full of CRLFs, dashes and near-boundaries; empty files; unicode names),
    encoded by httpx: our slices hold exactly the bytes the library's streaming parser hands out."""
    import random

    rng = random.Random(seed)
    pieces = [b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"x", b"\x00", b"-", "é".encode()]
    files = []
    for i in range(rng.randint(1, 6)):
        blob = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        files.append(("files", (f"{i}-ü.png", blob, "image/png")))
    body, ctype = encoded(files, {"top_k": str(rng.randint(1, 9))})
    boundary = ctype.split("boundary=")[1].encode()
    ours = parse_form(body, ctype, max_parts=20)
    theirs = _library_parts(body, boundary)
    assert [p.data for p in ours.parts] == [d for _, d in theirs]
    assert [(f.filename, f.data) for f in ours.files("files")] == [(name, blob) for _, (name, blob, _) in files]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'--b\r\ncontent-disposition: form-data; name="a"\r\n\r\nx', "closing boundary"),
        (b"--b\r\ncontent-disposition form-data\r\n\r\nx\r\n--b--", "no colon"),
        (b'--b\r\ncontent-disposition: form-data; name="a"\r\nx\r\n--b--', "empty line"),
        (b"--bXYZ\r\n\r\nx\r\n--b--", "line break"),
        (b"\r\n--b\r\n\r\nx\r\n--b--", "form-data name"),  # a part without headers names no field
    ],
    ids=["unterminated", "no-colon", "no-blank-line", "boundary-prefix", "no-headers"],
)
def test_malformed_bodies_say_what_is_wrong(body, why):
    with pytest.raises(BadRequest, match=why) as bad:
        parse_form(body, "multipart/form-data; boundary=b", max_parts=10)
    assert bad.value.status_code == 400 and bad.value.reason == "bad_multipart"


def test_a_preamble_an_epilogue_padding_and_header_case_are_read_as_the_rfc_says():
    body = (
        b'ignored preamble\r\n--b  \r\nCONTENT-DISPOSITION: form-data; name="files"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\nPNG\r\n--b\r\ncontent-disposition: form-data; name=top_k\r\n\r\n3"
        b"\r\n--b--\r\nignored epilogue"
    )
    form = parse_form(body, "multipart/form-data; boundary=b", max_parts=10)
    assert [(f.filename, f.data) for f in form.files("files")] == [("a.png", b"PNG")]
    assert form.text("top_k") == "3"
