"""Field types shared by the wire schemas, so that one rule holds on every transport (JSON and multipart
``/v1/audit``, ``/v1/classify``, the Kafka ``ImageMessage``) and is refused with the same sentence.

``Identifier``: an item id, a labeler id or a label. 1 to 200 characters, none of them a control
character (C0 ``U+0000``-``U+001F``, DEL ``U+007F``, C1 ``U+0080``-``U+009F``): PostgreSQL refuses NUL in
text, so a NUL in an id failed the store on every retry; ids become file names (the report's thumbnails)
where NUL is an error; and no real id or class name holds a tab, a newline or an escape sequence.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, StringConstraints
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The same set, as the JSON schema's pattern (ECMA-262 syntax, which Python's re reads the same way).
PRINTABLE_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"


def refuse_control_characters(value: str) -> str:
    """``value`` unchanged, or a validation error naming the first control character and where it is."""
    found = CONTROL_CHARACTER.search(value)
    if found is not None:
        raise PydanticCustomError(
            "control_character",
            "control character U+{code} at position {position}; ids and labels must be printable text",
            {"code": f"{ord(found.group()):04X}", "position": found.start()},
        )
    return value


class NoControlCharacters:
    """Annotation: refuse control characters after the type's own checks; the JSON schema says so too."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(refuse_control_characters, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        json_schema = handler(schema)
        json_schema["pattern"] = PRINTABLE_PATTERN
        return json_schema


Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200), NoControlCharacters()]
"""An item id, labeler id or label: 1 to 200 characters, no control characters."""

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=1000), NoControlCharacters()]
"""A relabel request's ``request_id`` as a label names it: three identifiers joined by ``/`` fit."""


def answer_problem(item_id: str, answers: str | None) -> str | None:
    """Why ``answers`` cannot be the request a label on ``item_id`` answers, or None. A request id starts with
    its item's id and a ``/`` (``RelabelRequest.request_id``): an answer naming another item's request is a
    tool's mix-up, refused rather than counted against the wrong label."""
    if answers is not None and not answers.startswith(f"{item_id}/"):
        return f"answers {answers!r} is not a request about item {item_id!r} (a request id starts with its item id and '/')"
    return None
