"""Answers encoded once, with orjson.

A route that returns its pydantic model has FastAPI validate it against the ``response_model`` again and then
serialise it (issue 19 measured that, with building the models, at several times orjson's cost on plain
values). The hot routes build plain values in their documented shape (``response_model`` stays on the route
for the OpenAPI description; tests/serving check the answers against it) and return them encoded here.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response


class OrjsonResponse(Response):
    """JSON like Starlette's ``JSONResponse`` (UTF-8, compact), encoded by orjson. Only for values that are
    finite: orjson writes NaN and infinity as null where ``JSONResponse`` refuses them."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
