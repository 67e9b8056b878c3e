"""The consumer audits a stream with a torchvision ResNet-18 fine-tuned from a user's classifier A (the
``resnet_repo`` fixture): real broker, real process, every message one record with the model's verdict."""

from __future__ import annotations

import pytest

from labelaudit.produce import image_messages, produce
from tests.stream.streamkit import Stream, relabel_ids, store_query

pytestmark = pytest.mark.slow


def test_the_consumer_audits_with_a_fine_tuned_resnet18(broker, resnet_repo, tiny_data, tmp_path):
    stream = Stream(broker, resnet_repo, f"sqlite:///{tmp_path / 'audit.db'}", tmp_path)
    messages = list(image_messages(tiny_data / "task_b.jsonl", split=None, by_uri=False, limit=300))
    try:
        produce(stream.settings(), messages, partitions=2)
        proc = stream.start_consumer("--max-messages", str(len(messages)))
        assert stream.wait(proc) == 0, stream.consumer_log(0)
    finally:
        stream.stop_all()

    rows = store_query(stream.store_url, "SELECT item_id, model_name, predicted_label, disagrees FROM audit_records")
    assert sorted(r[0] for r in rows) == sorted(m.item_id for m in messages)
    assert {r[1] for r in rows} == {"labelaudit"}
    assert len({r[2] for r in rows}) > 1  # a model that answers, not a constant
    flagged = {r[0] for r in rows if r[3]}
    assert 0 < len(flagged) < len(rows)
    assert {i.split("/")[0] for i in relabel_ids(stream.read_topic(stream.relabel_topic))} == flagged
