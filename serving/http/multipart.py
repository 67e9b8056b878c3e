"""multipart/form-data bodies parsed in memory: the body is read whole (``read_body``, size-checked) before it
is parsed, so its parts are slices of it, found with ``bytes.find`` on the delimiter (RFC 2046 section 5.1.1).
python-multipart parses the header parameters (``parse_options_header``: quoting, ``filename*``).

Why not Starlette's ``Request.form()``: it spools every file into a ``SpooledTemporaryFile`` through async
writes, about a fifth of the gateway's Python time for its common request (one image of a few hundred bytes).
Why not python-multipart's streaming ``MultipartParser``, which this module used until issue 19: a streaming
parser walks headers byte by byte in Python with a callback per piece, about 100 us for a one-image form, the
largest single cost of such a request after HTTP itself; the slices take a few.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from python_multipart.multipart import parse_options_header

from labelaudit.serving.http.body import BadRequest

# What clients send (curl, httpx, requests, browsers), read without python-multipart's general parser (~10 us a
# header): a boundary of RFC 2046's characters, and a disposition of a quoted name and filename with no escapes.
_PLAIN_BOUNDARY = re.compile(r"multipart/form-data; ?boundary=(\"?)([0-9A-Za-z'()+_,./:=?-]{1,70})\1")
_PLAIN_DISPOSITION = re.compile(rb'form-data; name="([^"\\]*)"(?:; filename="([^"\\]*)")?')


@dataclass
class Part:
    name: str
    filename: str | None  # None: a text field; "" or a name: a file
    data: bytes


@dataclass
class Form:
    parts: list[Part] = field(default_factory=list)

    def files(self, name: str) -> list[Part]:
        return [p for p in self.parts if p.name == name and p.filename is not None]

    def text(self, name: str) -> str | None:
        """The first text field called ``name``; a non-UTF-8 value is a 400."""
        for p in self.parts:
            if p.name == name and p.filename is None:
                try:
                    return p.data.decode()
                except UnicodeDecodeError:
                    raise BadRequest(f"form field {name!r} is not UTF-8", reason="bad_multipart") from None
        return None


def parse_form(body: bytes, content_type: str, *, max_parts: int) -> Form:
    """The parts of a multipart/form-data ``body``; a malformed body or more than ``max_parts`` parts is a 4xx."""
    if plain := _PLAIN_BOUNDARY.fullmatch(content_type):
        boundary = plain[2].encode()
    else:
        boundary = parse_options_header(content_type)[1].get(b"boundary", b"")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary", reason="bad_multipart")
    dash = b"--" + boundary
    delimiter = b"\r\n" + dash
    if body.startswith(dash):
        pos = len(dash)
    elif (first := body.find(delimiter)) >= 0:  # after a preamble
        pos = first + len(delimiter)
    else:
        raise _malformed("no boundary line")
    form = Form()
    while not body.startswith(b"--", pos):  # "--" after the boundary closes the body; what follows is ignored
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):  # only transport padding may follow a boundary
            raise _malformed("a boundary line is not followed by a line break")
        end = body.find(delimiter, line_end + 2)
        if end < 0:
            raise _malformed("the body ends before its closing boundary")
        if len(form.parts) >= max_parts:
            raise BadRequest(
                f"more than {max_parts} parts in the multipart body", reason="too_many_parts", status_code=413
            )
        form.parts.append(_part(body, line_end + 2, end))
        pos = end + len(delimiter)
    return form


def _part(body: bytes, start: int, end: int) -> Part:
    """The part between ``start`` (its first header line) and ``end`` (the delimiter after its data)."""
    if body.startswith(b"\r\n", start):  # no header lines at all
        head, data_start = b"", start + 2
    elif (head_end := body.find(b"\r\n\r\n", start, end)) >= 0:
        head, data_start = body[start:head_end], head_end + 4
    else:
        raise _malformed("a part's headers do not end with an empty line")
    disposition = b""
    for line in head.split(b"\r\n") if head else []:
        name, colon, value = line.partition(b":")
        if not colon:
            raise _malformed(f"a part's header line has no colon: {line[:60]!r}")
        if name.strip().lower() == b"content-disposition":
            disposition = value.strip()
    if plain := _PLAIN_DISPOSITION.fullmatch(disposition):
        name, filename = plain[1], plain[2]
    else:
        kind, params = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in params:
            raise BadRequest("a multipart part has no Content-Disposition form-data name", reason="bad_multipart")
        name, filename = params[b"name"], params.get(b"filename")
    return Part(
        name=name.decode("utf-8", "replace"),
        filename=None if filename is None else filename.decode("utf-8", "replace"),
        data=body[data_start:end],
    )


def _malformed(why: str) -> BadRequest:
    return BadRequest(f"malformed multipart body: {why}", reason="bad_multipart")
