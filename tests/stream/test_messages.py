"""From a Kafka record to an audit item, or to the dead letter's reason: the pure part of the consumer."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from labelaudit.errors import LabelAuditError
from labelaudit.schemas.audit import AuditRecord
from labelaudit.schemas.stream import (
    DLQ_OFFSET,
    DLQ_REASON,
    DLQ_TRUNCATED,
    IMAGE_SCHEMA,
    RelabelRequest,
    image_uri_path,
)
from labelaudit.serving.core.relabel import in_audit_sample, relabel_requests
from labelaudit.serving.stream.messages import BadMessage, dead_letter, parse_record, read_image_uri

LIMITS = {"max_message_bytes": 10_000, "max_image_bytes": 5_000}


def record(value, key=b"b-1", headers=None):
    return SimpleNamespace(topic="images", partition=2, offset=41, key=key, value=value, headers=headers or [])


def body(**fields) -> bytes:
    message = {
        "schema": IMAGE_SCHEMA,
        "item_id": "b-1",
        "image_b64": base64.b64encode(b"png").decode(),
        "label": "coat",
        "labeler_id": "anna",
    }
    message.update(fields)
    return json.dumps({k: v for k, v in message.items() if v is not None}).encode()


def test_a_good_message_becomes_an_item_with_its_place_in_the_topic():
    item = parse_record(record(body()), **LIMITS)
    assert (item.item_id, item.labeler_id, item.label, item.image) == ("b-1", "anna", "coat", b"png")
    assert (item.topic, item.partition, item.offset) == ("images", 2, 41)


def test_unlabeled_message_has_no_label_and_no_labeler():
    item = parse_record(record(body(label=None, labeler_id=None)), **LIMITS)
    assert (item.label, item.labeler_id) == (None, "")


def test_image_by_file_uri(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"bytes on disk")
    item = parse_record(record(body(image_b64=None, image_uri=path.as_uri())), **LIMITS)
    assert item.image == b"bytes on disk"
    assert item.image_uri == path.as_uri()  # kept with the record: the report and harvest find the file there
    assert parse_record(record(body()), **LIMITS).image_uri is None  # an inline image names no file


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (None, b"b-1", "empty_message"),
        (b"", b"b-1", "empty_message"),
        (b"x" * 10_001, b"b-1", "message_too_large"),
        (b"\xff\xfe not utf-8", b"b-1", "bad_json"),
        (b"[1, 2", b"b-1", "bad_json"),
        (b"[1, 2]", b"b-1", "invalid_message"),
        (body(schema="labelaudit.image.v2"), b"b-1", "invalid_message"),
        (body(image_b64=None), b"b-1", "invalid_message"),
        (body(image_uri="file:///x.png"), b"b-1", "invalid_message"),  # both image forms
        (body(label=None), b"b-1", "invalid_message"),  # a labeler without a label
        (body(extra_field=1), b"b-1", "invalid_message"),
        (body(image_b64="%%%"), b"b-1", "bad_base64"),
        (body(), b"b-2", "key_mismatch"),
        (body(image_b64=None, image_uri="https://example.com/x.png"), b"b-1", "unsupported_uri"),
        (body(image_b64=None, image_uri="file:///no/such/file.png"), b"b-1", "image_unreadable"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(value, key, reason):
    with pytest.raises(LabelAuditError) as info:  # BadMessage, or BadBase64 shared with HTTP
        parse_record(record(value, key=key), **LIMITS)
    assert info.value.reason == reason
    assert str(info.value)  # a sentence for people, next to the machine-readable reason


def test_a_message_without_a_key_is_accepted():
    assert parse_record(record(body(), key=None), **LIMITS).item_id == "b-1"


def test_a_dead_letter_keeps_the_original_and_adds_the_cause():
    letter = dead_letter(record(b"x", headers=[("trace", b"t1")]), BadMessage("nope", reason="bad_json"))
    as_dict = dict(letter.headers)
    assert (letter.key, letter.value, letter.headers[0]) == (b"b-1", b"x", ("trace", b"t1"))
    assert as_dict[DLQ_REASON] == b"bad_json" and as_dict[DLQ_OFFSET] == b"41"
    assert DLQ_TRUNCATED not in as_dict


def test_a_truncated_dead_letter_keeps_a_prefix_and_says_how_large_the_original_was():
    big = b"{" + b"x" * 9_000_000
    letter = dead_letter(record(big, key=b"k" * 5000), BadMessage("big", reason="message_too_large"), truncate=True)
    as_dict = dict(letter.headers)
    assert letter.value == big[: len(letter.value)] and 0 < len(letter.value) <= 16_384
    assert len(letter.key) <= 1024 and as_dict[DLQ_TRUNCATED] == b"9000001"
    assert as_dict[DLQ_REASON] == b"message_too_large"


def test_an_image_uri_that_is_not_a_regular_file_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # no writer: a blocking open would hang here
    for uri in ("file:///dev/zero", f"file://{fifo}", str(tmp_path), "file:///dev/null"):
        with pytest.raises(BadMessage) as info:
            read_image_uri(uri, 1024)
        assert info.value.reason == "image_unreadable"
        assert str(tmp_path) not in str(info.value)  # the DLQ's error header names the cause, not the path


def test_an_image_uri_is_read_up_to_its_limit(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"p" * 100)
    assert read_image_uri(image.as_uri(), 100) == b"p" * 100
    with pytest.raises(BadMessage, match="limit") as info:
        read_image_uri(image.as_uri(), 99)
    assert info.value.reason == "image_too_large"
    for uri in ("https://example.com/a.png", "file://otherhost/a.png", "relative/a.png"):
        with pytest.raises(BadMessage) as info:
            read_image_uri(uri, 100)
        assert info.value.reason == "unsupported_uri"


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:///data/a%20b.png", "/data/a b.png"),  # a URI's escapes are undone
        ("file://localhost/data/a.png", "/data/a.png"),
        ("/data/a.png", "/data/a.png"),  # a plain absolute path, as producers may send
    ],
)
def test_an_image_uri_names_a_local_absolute_path(uri, path):
    assert image_uri_path(uri) == path


@pytest.mark.parametrize(
    ("uri", "cause"),
    [
        ("https://example.com/a.png", "scheme 'https' is not supported"),
        ("file://otherhost/a.png", "another host"),
        ("relative/a.png", "absolute path"),
        ("file:relative/a.png", "absolute path"),
    ],
)
def test_an_image_uri_that_names_no_local_absolute_path_says_why(uri, cause):
    with pytest.raises(ValueError, match=cause):
        image_uri_path(uri)


def _verdict(item_id: str = "b-1", labeler_id: str = "anna", disagrees: bool = True, **more) -> AuditRecord:
    return AuditRecord(
        item_id=item_id,
        labeler_id=labeler_id,
        human_label="coat",
        predicted_label="shirt",
        label_probability=0.05,
        predicted_probability=0.9,
        score=0.85,
        disagrees=disagrees,
        policy="confident-joint-v1",
        probabilities=[0.1] * 10,
        model_name="labelaudit",
        model_version="1",
        source="kafka",
        created_at=datetime.now(UTC),
    ).model_copy(update=more)


def test_relabel_request_id_is_stable_across_redeliveries():
    verdict = _verdict()
    ((key, value),) = relabel_requests(verdict)
    again = relabel_requests(verdict.model_copy(update={"created_at": datetime(2030, 1, 1, tzinfo=UTC)}))[0][1]
    request = RelabelRequest.model_validate_json(value)
    assert key == b"b-1" and request.request_id == "b-1/anna/1" and request.reason == "disagreement"
    assert RelabelRequest.model_validate_json(again).request_id == request.request_id
    assert json.loads(value)["schema"] == "labelaudit.relabel.v1"
    assert relabel_requests(_verdict(disagrees=False)) == []  # no sample asked for: an agreeing label asks nothing


def test_the_audit_sample_is_a_random_share_of_items_drawn_the_same_way_every_time():
    ids = [f"item-{i}" for i in range(20_000)]
    drawn = [in_audit_sample(i, 0.1) for i in ids]
    assert 0.09 < sum(drawn) / len(drawn) < 0.11
    assert drawn == [in_audit_sample(i, 0.1) for i in ids]  # a hash, not a random stream
    assert all(in_audit_sample(i, 0.2) for i, d in zip(ids, drawn, strict=True) if d)  # a larger share keeps these
    assert not any(in_audit_sample(i, 0.0) for i in ids) and all(in_audit_sample(i, 1.0) for i in ids)


def test_an_item_in_the_audit_sample_asks_once_for_a_second_opinion_whichever_label_arrives():
    item = next(f"item-{i}" for i in range(1_000) if in_audit_sample(f"item-{i}", 0.05))
    first = relabel_requests(_verdict(item, "anna", disagrees=False), audit_sample_rate=0.05)
    second = relabel_requests(_verdict(item, "ben", disagrees=True), audit_sample_rate=0.05)
    ((key, value),) = first
    sample = RelabelRequest.model_validate_json(value)
    assert key == item.encode() and sample.reason == "audit_sample"
    assert sample.request_id == f"{item}/audit-sample/1" and sample.labeler_id == "anna"
    # blind: the second person sees neither the first label nor the model's
    blind = ("human_label", "label_probability", "predicted_label", "predicted_probability", "score")
    assert all(json.loads(value)[name] is None for name in blind)
    # ben's label (the second opinion, here disagreeing): its own disagreement request and the same sample request
    reasons = {RelabelRequest.model_validate_json(v).reason: RelabelRequest.model_validate_json(v) for _, v in second}
    assert reasons["disagreement"].request_id == f"{item}/ben/1"
    assert reasons["audit_sample"].request_id == sample.request_id
    assert reasons["disagreement"].human_label is not None and reasons["disagreement"].score is not None
    unlabeled = _verdict(item, "", disagrees=False, human_label=None, label_probability=None)
    assert relabel_requests(unlabeled, audit_sample_rate=1.0) == []  # no label, nothing to second-guess


@pytest.mark.parametrize("field", ["item_id", "labeler_id", "label"])
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x85"], ids=["NUL", "ESC", "DEL", "NEL"])
def test_control_characters_in_ids_and_labels_are_dead_letters(field, char):
    """PostgreSQL refuses NUL in text: such a message would fail the store on every retry. It is refused
    here, with the sentence the HTTP routes answer for the same field."""
    with pytest.raises(BadMessage) as info:
        parse_record(record(body(**{field: f"b{char}1"}), key=None), **LIMITS)
    assert info.value.reason == "invalid_message"
    assert f"{field}: control character U+{ord(char):04X} at position 1" in str(info.value)


def test_a_relabel_request_is_blind_exactly_when_it_asks_for_a_second_opinion():
    fields = dict(
        item_id="b-1",
        labeler_id="anna",
        policy="p",
        model_name="m",
        model_version="1",
        created_at="2026-11-21T00:00:00Z",
    )
    seen = dict(human_label="cat", label_probability=0.1, predicted_label="dog", predicted_probability=0.8, score=0.7)
    RelabelRequest(request_id="b-1/anna/1", reason="disagreement", **fields, **seen)
    RelabelRequest(request_id="b-1/audit-sample/1", reason="audit_sample", **fields, **dict.fromkeys(seen))
    with pytest.raises(ValueError, match="an audit-sample request is blind: human_label set"):
        RelabelRequest(
            request_id="b-1/audit-sample/1",
            reason="audit_sample",
            **fields,
            **(dict.fromkeys(seen) | {"human_label": "cat"}),
        )
    with pytest.raises(ValueError, match="a disagreement request needs score"):
        RelabelRequest(request_id="b-1/anna/1", reason="disagreement", **fields, **(seen | {"score": None}))
