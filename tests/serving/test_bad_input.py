"""Bad input gets a 4xx with a reason, never a 500 (issue 16): control characters and over-long ids on
every form of /v1/audit, multipart fields checked by the same models as JSON, top_k and Content-Length
that only look like numbers, and v2 requests that used to crash the route."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.requests import Request

from labelaudit.serving.core.store import SqliteStore
from labelaudit.serving.http.app import create_app
from labelaudit.serving.http.body import read_body
from labelaudit.serving.settings import Settings
from tests.serving.httpkit import connect, post, read_response


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = png()
CONTROL = {"NUL": "\x00", "BEL": "\x07", "LF": "\n", "DEL": "\x7f", "CSI (C1)": "\x9b"}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return tmp_path_factory.mktemp("bad-input") / "audit.db"


@pytest.fixture(scope="module")
def client(model_repo, store_path):
    settings = Settings(model_repo=model_repo, ort_intra_op_threads=1, store_url=f"sqlite:///{store_path}")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def a_class(client) -> str:
    return client.get("/v1/models").json()["classes"][0]


def audit_both_ways(client, fields: dict[str, str]):
    """The same audit as JSON (base64 image) and as multipart (file and text fields)."""
    as_json = client.post("/v1/audit", json=fields | {"image": base64.b64encode(GOOD).decode()})
    as_form = client.post("/v1/audit", data=fields, files={"image": ("x.png", GOOD, "image/png")})
    return as_json, as_form


@pytest.mark.parametrize("char", CONTROL.values(), ids=CONTROL.keys())
@pytest.mark.parametrize("field", ["item_id", "labeler_id", "label"])
def test_control_characters_in_audit_fields_are_422_on_both_forms(client, store_path, a_class, field, char):
    fields = {"item_id": "b-1", "labeler_id": "anna", "label": a_class} | {field: f"a{char}b"}
    as_json, as_form = audit_both_ways(client, fields)
    for response in (as_json, as_form):
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_request"
        assert response.json()["detail"].startswith(f"{field}: control character U+{ord(char):04X} at position 1")
    assert as_form.json() == as_json.json()  # one model, one sentence
    assert SqliteStore(store_path).count() == 0


@pytest.mark.parametrize("field", ["item_id", "labeler_id", "label"])
def test_multipart_audit_fields_have_the_json_length_limits(client, store_path, a_class, field):
    fields = {"item_id": "b-1", "labeler_id": "anna", "label": a_class}
    for value, words in (("x" * 201, "at most 200 characters"), ("", "at least 1 character")):
        as_json, as_form = audit_both_ways(client, fields | {field: value})
        assert as_json.status_code == as_form.status_code == 422, as_form.text
        assert as_form.json() == as_json.json() and words in as_form.json()["detail"]
    assert SqliteStore(store_path).count() == 0


def test_multipart_audit_names_every_missing_part(client):
    response = client.post("/v1/audit", data={"item_id": "b-1"}, files={"other": ("x.png", GOOD)})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert all(f"{name}: Field required" in detail for name in ("image", "labeler_id", "label")), detail


def test_a_good_multipart_audit_still_records(client, a_class):
    response = client.post(
        "/v1/audit",
        data={"item_id": "ok-1", "labeler_id": "anna", "label": a_class},
        files={"image": ("x.png", GOOD, "image/png")},
    )
    assert response.status_code == 200 and response.json()["recorded"] is True, response.text


def test_classify_ids_refuse_control_characters(client):
    image = {"data": base64.b64encode(GOOD).decode(), "id": "a\x00b"}
    response = client.post("/v1/classify", json={"images": [image]})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("images.0.id: control character U+0000 at position 1")


@pytest.mark.parametrize("top_k", ["²", "٣", "５", "0", "1001", "-1", "x", "1e3"])
def test_multipart_top_k_is_checked_like_the_json_one(client, top_k):
    as_form = client.post("/v1/classify", files=[("files", ("a.png", GOOD, "image/png"))], data={"top_k": top_k})
    as_json = client.post("/v1/classify", json={"images": [{"data": base64.b64encode(GOOD).decode()}], "top_k": top_k})
    assert as_form.status_code == as_json.status_code == 422, as_form.text
    assert as_form.json() == as_json.json() and as_form.json()["detail"].startswith("top_k: ")


def test_multipart_top_k_in_range_is_used(client):
    response = client.post("/v1/classify", files=[("files", ("a.png", GOOD, "image/png"))], data={"top_k": "4"})
    assert response.status_code == 200 and len(response.json()["results"][0]["top"]) == 4


@pytest.mark.parametrize("declared", ["²".encode("latin-1"), b"\xb9", b"1e3", b"-5", b" 3"])
def test_content_length_is_read_as_ascii_digits_only(declared):
    """A Content-Length that is not plain digits is no size to check against the limit (the server, not the
    app, frames the body); the body as received still is."""
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", declared)]}
    chunks = [{"type": "http.request", "body": b"abc", "more_body": False}]

    async def receive():
        return chunks.pop(0)

    assert asyncio.run(read_body(Request(scope, receive), 10)) == b"abc"


# -- /v2 on a real server: every bad body is a 4xx and the keep-alive connection stays up -------------


def v2_images(data, *, shape=(1, 1, 28, 28), **extra) -> bytes:
    spec = {"name": "images", "datatype": "FP32", "shape": list(shape), "data": data}
    return json.dumps({"inputs": [spec], **extra}).encode()  # json.dumps writes NaN and Infinity as such


def v2_binary_images(values: np.ndarray) -> tuple[bytes, dict]:
    raw = values.astype("<f4").tobytes()
    spec = {"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [spec]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def deep(levels: int) -> bytes:
    return (
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": '
        + b"[" * levels
        + b"]" * levels
        + b"}]}"
    )


BAD_V2 = {
    "nan": (v2_images([float("nan")] + [0.0] * 783), "not finite"),
    "infinity": (v2_images([float("inf")] + [0.0] * 783), "not finite"),
    "1e400": (v2_images([0.0] * 783 + [1e400]), "not finite"),
    "huge-integer": (v2_images([0.0] * 784).replace(b"0.0]", b"1" + b"0" * 400 + b"]"), ""),
    "1e38": (v2_images([1e38] * 784), "not finite"),  # finite input, overflowing model: NaN/inf out
    "1e38-binary-out": (v2_images([1e38] * 784, parameters={"binary_data_output": True}), "not finite"),
    "bytes-above-latin-1": (
        json.dumps(
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["\u0100"]}]}
        ).encode(),
        "U+00FF",
    ),
    "lone-surrogate": (
        b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}',
        "",
    ),
    "deep-json": (deep(100_000), ""),
    "deep-json-within-limit": (deep(150), ""),
}


def test_bad_v2_bodies_are_4xx_and_keep_the_connection(gateway):
    url = "/v2/models/labelaudit/infer"
    binary_nan, binary_headers = v2_binary_images(np.full(784, np.nan, dtype=np.float32))
    cases = [
        *((name, body, {}, words) for name, (body, words) in BAD_V2.items()),
        ("nan-binary", binary_nan, binary_headers, "not finite"),
    ]
    with connect(gateway) as sock:
        for name, body, headers, words in cases:
            sock.sendall(post(url, body, headers=headers))
            status, _, answer = read_response(sock)
            assert 400 <= status < 500, f"{name}: {status} {answer[:300]!r}"
            assert words in json.loads(answer)["error"], f"{name}: {answer[:300]!r}"
        sock.sendall(post(url, v2_images([0.5] * 784)))  # the same connection still serves
        status, _, answer = read_response(sock)
        assert status == 200 and np.isfinite(json.loads(answer)["outputs"][0]["data"]).all()


def test_v1_and_v2_refuse_the_same_deep_json(client):
    body = deep(100_000)
    v1 = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    v2 = client.post("/v2/models/labelaudit/infer", content=body)
    assert v1.status_code == 422 and 400 <= v2.status_code < 500
    assert "recursion limit" in v1.json()["detail"] and "recursion limit" in v2.json()["error"]


def test_v2_binary_header_length_must_be_plain_digits(client):
    body, _ = v2_binary_images(np.zeros(784, dtype=np.float32))
    for bad in ("²".encode("latin-1"), b"-5", b" 7", str(len(body) + 1).encode()):
        r = client.post("/v2/models/labelaudit/infer", content=body, headers={"Inference-Header-Content-Length": bad})
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"], r.text


def test_v2_bytes_json_data_is_one_byte_per_character(client):
    """Characters up to U+00FF are the bytes 0 to 255 (latin-1): a PNG sent that way decodes."""
    spec = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [GOOD.decode("latin-1")]}
    r = client.post("/v2/models/labelaudit/infer", json={"inputs": [spec]})
    assert r.status_code == 200, r.text
    packed = struct.pack("<I", len(GOOD)) + GOOD  # the same image through the binary extension
    spec = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(packed)}}
    header = json.dumps({"inputs": [spec]}).encode()
    binary = client.post(
        "/v2/models/labelaudit/infer",
        content=header + packed,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert binary.status_code == 200
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], json.loads(binary.content)["outputs"][0]["data"])
