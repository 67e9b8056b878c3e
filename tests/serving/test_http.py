"""The gateway through httpx against the real app and a real exported model, with a bad-input corpus."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from labelaudit.serving.http.app import create_app
from labelaudit.serving.settings import Settings


def png(array: np.ndarray) -> bytes:
    """Pillow picks the mode from the array: (H, W, 4) RGBA, (H, W, 2) LA, uint16 (H, W) I;16."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def test_images(tiny_data) -> list[tuple[str, bytes]]:
    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    return [(r["label"], (tiny_data / r["image"]).read_bytes()) for r in rows if r["split"] == "test"][:40]


def settings_for(model_repo, **overrides) -> Settings:
    return Settings(model_repo=model_repo, ort_intra_op_threads=1, **overrides)


@pytest.fixture(scope="module")
def client(model_repo):
    with TestClient(create_app(settings_for(model_repo, max_images_per_request=8, max_body_bytes=2_000_000))) as c:
        yield c


def classify_files(client, images: list[bytes], **data):
    files = [("files", (f"img{i}.png", img, "image/png")) for i, img in enumerate(images)]
    return client.post("/v1/classify", files=files, data=data)


def test_classify_multipart_returns_ranked_top_k_from_the_cards_classes(client, test_images):
    response = classify_files(client, [img for _, img in test_images[:5]], top_k="3")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "labelaudit" and body["model_version"] == "1"
    classes = client.get("/v1/models").json()["classes"]
    for i, result in enumerate(body["results"]):
        assert result["index"] == i and result["id"] == f"img{i}.png"
        probs = [t["probability"] for t in result["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert all(t["label"] in classes for t in result["top"])


def test_json_base64_gives_the_same_answer_as_multipart(client, test_images):
    images = [img for _, img in test_images[:3]]
    payload = {
        "images": [{"data": base64.b64encode(img).decode(), "id": f"x{i}"} for i, img in enumerate(images)],
        "top_k": 2,
    }
    as_json = client.post("/v1/classify", json=payload).json()["results"]
    as_files = classify_files(client, images, top_k="2").json()["results"]
    for a, b in zip(as_json, as_files, strict=True):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        np.testing.assert_allclose(
            [t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]], atol=1e-6
        )
    assert [r["id"] for r in as_json] == ["x0", "x1", "x2"]


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")  # compresses to a few kB
    return buf.getvalue()


def _jpeg(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (40, 30), (10, 20, 30, 40) if mode == "CMYK" else 0).save(buf, format="JPEG")
    return buf.getvalue()


GOOD = png(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))

BAD_IMAGES = {
    "empty": (b"", 400, "empty_image"),
    "text": (b"hello, I am not an image", 400, "not_an_image"),
    "truncated": (GOOD[: len(GOOD) // 2], 400, "corrupt_image"),
    "corrupt": (GOOD[:100] + bytes(b ^ 0xFF for b in GOOD[100:300]) + GOOD[300:], 400, "corrupt_image"),
    "bomb": (_bomb(), 400, "too_many_pixels"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images_get_a_4xx_with_a_reason(client, name):
    data, status, reason = BAD_IMAGES[name]
    response = classify_files(client, [GOOD, data])
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason
    assert "image 1" in response.json()["detail"] and "Traceback" not in response.text


@pytest.mark.parametrize(
    "image",
    [
        png(np.zeros((28, 28, 4), dtype=np.uint8)),
        png(np.zeros((28, 28, 2), dtype=np.uint8)),
        png(np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)),
        _jpeg("CMYK"),
        _jpeg("RGB"),
    ],
    ids=["rgba", "la", "16bit", "cmyk", "rgb-other-size"],
)
def test_other_modes_and_sizes_are_converted(client, image):
    assert classify_files(client, [image]).status_code == 200


def test_palette_png_is_converted(client):
    img = Image.new("P", (28, 28))
    img.putpalette([0, 0, 0, 255, 255, 255] * 128)
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    assert classify_files(client, [buf.getvalue()]).status_code == 200


MULTIPART_NO_NAME = b'--b\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nxx\r\n--b--\r\n'


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"json": {"images": []}}, 422, "invalid_request"),
        ({"json": {"images": [{"data": "!!!"}]}}, 422, "bad_base64"),
        ({"json": {"pictures": []}}, 422, "invalid_request"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid_request"),
        ({"content": b"raw", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"data": {"top_k": "3"}, "files": [("other", ("a", b"x"))]}, 422, "no_images"),
        ({"content": b"x" * 2_100_000, "headers": {"content-type": "application/json"}}, 413, "body_too_large"),
        ({"content": b"--b\r\n", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_multipart"),
        ({"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400, "bad_multipart"),
        (
            {"content": MULTIPART_NO_NAME, "headers": {"content-type": "multipart/form-data; boundary=b"}},
            400,
            "bad_multipart",
        ),
        ({"files": [("files", ("a.png", GOOD))] * 30}, 413, "too_many_parts"),
        ({"files": [("files", ("a.png", GOOD))], "data": {"top_k": "x"}}, 422, "invalid_request"),
    ],
    ids=[
        "no-images",
        "bad-base64",
        "wrong-field",
        "broken-json",
        "text-plain",
        "no-files-part",
        "huge-body",
        "no-boundary",
        "not-multipart",
        "part-without-name",
        "too-many-parts",
        "bad-top-k",
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason(client, kwargs, status, reason):
    response = client.post("/v1/classify", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason


def test_too_many_images_is_413(client):
    response = classify_files(client, [GOOD] * 9)
    assert response.status_code == 413 and response.json()["error"] == "too_many_images"


def test_health_readiness_card_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["version"] == "1"
    card = client.get("/v1/models").json()
    assert card["preprocess"]["height"] == 28 and len(card["disagreement_thresholds"]) == 10
    classify_files(client, [GOOD])
    text = client.get("/metrics").text
    for name in (
        "labelaudit_batch_images_bucket",
        "labelaudit_batch_releases_total",
        "labelaudit_http_request_seconds",
    ):
        assert name in text


def test_apps_in_one_process_keep_their_metrics_apart(model_repo):
    """One worker: a registry per app (no multiprocess folder), so two apps never count each other's requests."""
    line = 'labelaudit_http_requests_total{route="/v1/classify",status="200"}'
    with TestClient(create_app(settings_for(model_repo))) as a, TestClient(create_app(settings_for(model_repo))) as b:
        assert classify_files(a, [GOOD]).status_code == 200 and classify_files(a, [GOOD]).status_code == 200
        assert f"{line} 2.0" in a.get("/metrics").text
        assert line not in b.get("/metrics").text


def test_api_key_is_enforced_when_configured(model_repo):
    with TestClient(create_app(settings_for(model_repo, api_key="k3y"))) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer k3y"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": "k3y"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_concurrent_requests_through_the_batcher_get_their_own_answers(model_repo, test_images):
    app = create_app(settings_for(model_repo, max_batch_size=16, max_batch_delay_ms=5))

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:

                async def one(img: bytes):
                    r = await c.post(
                        "/v1/classify", files=[("files", ("i.png", img, "image/png"))], data={"top_k": "10"}
                    )
                    assert r.status_code == 200, r.text
                    return {t["label"]: t["probability"] for t in r.json()["results"][0]["top"]}

                alone = [await one(img) for _, img in test_images[:20]]
                together = await asyncio.gather(*(one(img) for _, img in test_images[:20]))
                batches = app.state.batcher
                return alone, together, batches

    alone, together, _ = asyncio.run(scenario())
    for a, b in zip(alone, together, strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=1e-5)


def test_openapi_documents_both_request_forms_and_the_error_shape(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "examples" in json.dumps(body["application/json"])
    assert "ErrorResponse" in json.dumps(spec["paths"]["/v1/classify"]["post"]["responses"]["413"])
    assert "/v2/models/{name}/infer" in spec["paths"]


def test_openapi_has_an_example_for_every_request_and_response_body(client):
    """The docs page shows what to send and what comes back, for /v1 and for v2 inference."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def has_example(media: dict) -> bool:
        if "example" in media or "examples" in media or "examples" in media.get("schema", {}):
            return True
        ref = media.get("schema", {}).get("$ref", "")
        return "examples" in schemas.get(ref.rsplit("/", 1)[-1], {})

    for path, method in (("/v1/classify", "post"), ("/v1/audit", "post"), ("/v2/models/{name}/infer", "post")):
        op = spec["paths"][path][method]
        assert has_example(op["requestBody"]["content"]["application/json"]), f"{method} {path}: request"
        assert has_example(op["responses"]["200"]["content"]["application/json"]), f"{method} {path}: response"


def test_the_hot_path_answers_as_the_documented_routes_do(client, test_images):
    """POST /v1/classify and /v1/audit are served by serving/http/hot.py in front of FastAPI; the FastAPI routes
    that document them run the same handlers. Sent straight to the router (no middleware, so no hot path),
    the same requests get the same answers: the OpenAPI description is of what is served."""
    from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware

    app = client.app

    async def app_scope(scope, receive, send):
        scope["app"] = app  # what Starlette sets before its middleware; the routes read app.state from it
        await app.router(scope, receive, send)

    router_only = AsyncExitStackMiddleware(app_scope)  # what FastAPI's routes expect around them

    image = test_images[0][1]
    label = test_images[0][0]
    requests = [
        ("/v1/classify", {"files": [("files", ("a.png", image, "image/png"))], "data": {"top_k": "2"}}),
        ("/v1/classify", {"json": {"images": [{"id": "x", "data": base64.b64encode(image).decode()}]}}),
        (
            "/v1/audit",
            {
                "json": {
                    "item_id": "hot-1",
                    "labeler_id": "l",
                    "label": label,
                    "image": base64.b64encode(image).decode(),
                }
            },
        ),
    ]

    async def direct(path, kwargs):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=router_only), base_url="http://x") as c:
            return await c.post(path, **kwargs)

    for path, kwargs in requests:
        hot = client.post(path, **kwargs)
        routed = client.portal.call(direct, path, kwargs)  # on the app's own event loop (its batcher's)
        assert hot.status_code == routed.status_code == 200, (hot.text, routed.text)
        assert hot.headers["content-type"] == routed.headers["content-type"] == "application/json"
        hot_json, routed_json = hot.json(), routed.json()
        if path == "/v1/audit":  # the same item again: the route's answer is the repeat (recorded false)
            assert hot_json.pop("recorded") is True and routed_json.pop("recorded") is False
        assert hot_json == routed_json
