"""multipart/form-data bodies parsed in memory with python-multipart's streaming parser.

Why not Starlette's ``Request.form()``: it spools every file into a ``SpooledTemporaryFile`` through async
writes, which for the gateway's common request (one image of a few hundred bytes, already read and
size-checked by ``read_body``) was about a fifth of the Python time per request. The body is in memory
anyway; its parts are slices of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from labelaudit.serving.http.body import BadRequest

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


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


class _Collector:
    """python-multipart's callbacks: headers per part, then the part's bytes."""

    def __init__(self, max_parts: int):
        self.max_parts = max_parts
        self.form = Form()
        self.headers: dict[bytes, bytes] = {}
        self.field, self.value, self.data = b"", b"", bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.part_begin,
            "on_part_data": lambda d, a, b: self.data.extend(d[a:b]),
            "on_header_field": lambda d, a, b: setattr(self, "field", self.field + d[a:b]),
            "on_header_value": lambda d, a, b: setattr(self, "value", self.value + d[a:b]),
            "on_header_end": self.header_end,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        if len(self.form.parts) >= self.max_parts:
            raise BadRequest(
                f"more than {self.max_parts} parts in the multipart body", reason="too_many_parts", status_code=413
            )
        self.headers, self.data = {}, bytearray()

    def header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def part_end(self) -> None:
        disposition, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise BadRequest("a multipart part has no Content-Disposition form-data name", reason="bad_multipart")
        filename = params.get(b"filename")
        self.form.parts.append(
            Part(
                name=params[b"name"].decode("utf-8", "replace"),
                filename=None if filename is None else filename.decode("utf-8", "replace"),
                data=bytes(self.data),
            )
        )


def parse_form(body: bytes, content_type: str, *, max_parts: int) -> Form:
    """The parts of a multipart/form-data ``body``; a malformed body or more than ``max_parts`` parts is a 4xx."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary", reason="bad_multipart")
    collector = _Collector(max_parts)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}", reason="bad_multipart") from None
    return collector.form
