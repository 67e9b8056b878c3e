"""Labelers' error rates from one label per item: the model's measured confusion taken out of their
disagreement with it. Exact on a hand-built table, within its interval on simulated streams, and in the
report where a labeler shares no items (source "model"), with the card read from a model repository."""

from __future__ import annotations

import numpy as np
import pytest

from labelaudit.deconvolve import MAX_CLASSES, ModelConfusion, error_rates, fit, labeler_tables
from labelaudit.serving.core.store import open_store
from labelaudit.serving.report.build import build_report
from labelaudit.serving.report.job import card_confusion, night_window
from labelaudit.serving.report.stats import wilson
from tests.report.reportkit import CLASSES, NIGHT, fill, record


def symmetric(k: int, error: float) -> np.ndarray:
    """T with ``1 - error`` on the diagonal, the rest spread evenly. (K, K)"""
    t = np.full((k, k), error / (k - 1))
    np.fill_diagonal(t, 1 - error)
    return t


def test_an_exact_table_gives_its_error_rate_back():
    """K = 2 by hand: pi = (0.6, 0.4), the model right 0.9 / 0.8 of the time, the labeler 0.7 / 0.95:
    O[k, j] = sum_i pi_i C[i, k] T[i, j]; its error rate is 0.6 * 0.3 + 0.4 * 0.05 = 0.2, while it
    disagrees with the model on O[0, 1] + O[1, 0] = (0.162 + 0.076) + (0.042 + 0.016) = 0.296 of its items."""
    pi = np.array([0.6, 0.4])
    c = np.array([[0.9, 0.1], [0.2, 0.8]])
    t = np.array([[0.7, 0.3], [0.05, 0.95]])
    table = np.einsum("i,ik,ij->kj", pi, c, t) * 10_000
    assert table[0, 1] + table[1, 0] == pytest.approx(2_960)
    assert fit(table[None], c[None], iterations=2_000)[0] == pytest.approx(0.2, abs=1e-3)


def simulated(errors: dict[str, float], k: int, items: int, model_error: float, seed: int):
    """Labelers with symmetric noise at ``errors`` and a model wrong ``model_error`` of the time (independently
    of the labelers): their (model's label, human label) tables, the model's confusion counted on 1,000
    clean held-out images, and each labeler's true error rate over its items."""
    rng = np.random.default_rng(seed)
    c_true = symmetric(k, model_error)
    held_out = rng.integers(k, size=1_000)
    confusion = np.zeros((k, k))
    np.add.at(confusion, (held_out, [rng.choice(k, p=c_true[i]) for i in held_out]), 1)
    tables, truth_rates = {}, {}
    for name, e in errors.items():
        truth = rng.choice(k, size=items, p=np.linspace(1, 2, k) / np.linspace(1, 2, k).sum())  # uneven classes
        said = np.array([rng.choice(k, p=symmetric(k, e)[i]) for i in truth])
        model = np.array([rng.choice(k, p=c_true[i]) for i in truth])
        tables[name] = np.zeros((k, k))
        np.add.at(tables[name], (model, said), 1)
        truth_rates[name] = float((said != truth).mean())
    return tables, confusion, truth_rates


@pytest.mark.parametrize("seed", [0, 1])
def test_simulated_labelers_error_rates_lie_in_their_intervals(seed):
    errors = {"careful": 0.05, "good": 0.12, "sloppy": 0.4, "spammer": 0.9}
    tables, confusion, truth = simulated(errors, k=6, items=1_500, model_error=0.2, seed=seed)
    got = error_rates(tables, confusion, bootstrap=200, seed=seed)
    for name, rate in truth.items():
        est = got[name]
        assert est.low <= rate <= est.high, (name, rate, est)
        assert est.rate == pytest.approx(rate, abs=0.04)
        disagreement = 1 - np.trace(tables[name]) / tables[name].sum()
        if rate < 0.5:  # the model's own mistakes no longer count against the labeler
            assert est.rate < disagreement - 0.08


def test_a_labelers_interval_does_not_depend_on_the_order_or_company_of_the_others():
    """SQLite and PostgreSQL hand the report its labelers in different orders; the same store must give
    the same report, intervals included, and a labeler's interval must not move when another joins."""
    tables, confusion, _ = simulated({"a": 0.05, "b": 0.3, "c": 0.6}, k=4, items=400, model_error=0.2, seed=3)
    forward = error_rates(tables, confusion, bootstrap=50)
    backward = error_rates(dict(reversed(tables.items())), confusion, bootstrap=50)
    alone = error_rates({"c": tables["c"]}, confusion, bootstrap=50)
    assert forward == backward
    assert alone["c"] == forward["c"]


def test_labels_outside_the_models_classes_are_errors():
    tables = labeler_tables(
        [
            ("a", "cat", "cat", 80),
            ("a", "dog", "dog", 10),
            ("a", "cat", "zebra", 10),
            ("a", "unknown-to-card", "cat", 5),
        ],
        ["cat", "dog"],
    )
    assert tables["a"].shape == (2, 3) and tables["a"].sum() == 100  # the row with a foreign model label is left out
    perfect_model = np.array([[500, 0], [0, 500]])
    assert error_rates(tables, perfect_model, bootstrap=50)["a"].rate == pytest.approx(0.1, abs=0.01)


def single_label_store(tmp_path, rng) -> str:
    """Three labelers, one label per item over classes cat/dog/fox: the model is right 80% of the time; 'ada'
    errs 5%, 'bo' 40% (independently of the model)."""
    records = []
    for i in range(900):
        labeler, error = ("ada", 0.05) if i % 2 else ("bo", 0.4)
        truth = int(rng.integers(3))
        model = truth if rng.random() < 0.8 else (truth + rng.integers(1, 3)) % 3
        human = truth if rng.random() >= error else (truth + rng.integers(1, 3)) % 3
        p = {c: 0.1 for c in CLASSES[:3]} | {CLASSES[model]: 0.8}
        records.append(record(f"x{i}", labeler, CLASSES[human], CLASSES[model], p, flag=human != model, score=0.5))
    return fill(f"sqlite:///{tmp_path / 's.db'}", records)


def report_with_card(url: str, card: ModelConfusion | None):
    """The night's report of the store at ``url``, the model's confusion from ``card``."""
    store = open_store(url)
    try:
        return build_report(
            store,
            window=night_window(NIGHT),
            store_kind="sqlite",
            classes=CLASSES,
            class_source="t",
            model_confusion=lambda name, version: card,
        )
    finally:
        store.close()


def test_the_report_uses_the_models_confusion_for_single_labeled_labelers(tmp_path):
    url = single_label_store(tmp_path, np.random.default_rng(3))
    confusion = np.array([[80, 10, 10, 0], [10, 80, 10, 0], [10, 10, 80, 0], [0, 0, 0, 1]])
    card = ModelConfusion(CLASSES, confusion, "val split")
    with_card, without = report_with_card(url, card), report_with_card(url, None)
    rows = {r.labeler_id: r for r in with_card.labelers}
    assert {r.estimated_error.source for r in rows.values()} == {"model"}
    assert rows["ada"].estimated_error.rate == pytest.approx(0.05, abs=0.05)
    assert rows["bo"].estimated_error.rate == pytest.approx(0.4, abs=0.07)
    assert rows["ada"].disagreement.rate > 0.2  # what the report said before: the model's errors count
    assert {r.estimated_error.source for r in without.labelers} == {"disagreement"}
    assert any("--model-repo" in note for note in without.notes)


def test_card_confusion_reads_the_reported_versions_card(tmp_path):
    from labelaudit.schemas.model_card import ModelCard

    version = tmp_path / "m" / "3"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"")
    card = {
        "name": "m",
        "version": "3",
        "created_at": "2026-12-02T00:00:00Z",
        "classes": ["a", "b"],
        "preprocess": {"height": 2, "width": 2, "channels": 1, "mean": [0.5], "std": [0.5]},
        "architecture": "x",
        "method": "crowd",
        "init": "scratch",
        "metrics": {"trusted_acc": 0.5},
        "gate": {"passed": True, "metric": "trusted_acc", "initial": None, "final": 0.5, "reason": "r"},
        "disagreement_thresholds": [0.5, 0.5],
        "thresholds_source": "val split",
        "data_version": "d",
        "code_version": "c",
        "confusion": [[9, 1], [2, 8]],
    }
    (version / "model_card.json").write_text(ModelCard.model_validate(card).model_dump_json())
    lookup = card_confusion(tmp_path)
    found = lookup("m", "3")
    assert found is not None and found.counts.tolist() == [[9, 1], [2, 8]] and found.source == "val split"
    assert lookup("m", "4") is None and card_confusion(None)("m", "3") is None
    with pytest.raises(ValueError, match="confusion must be 2 x 2"):
        ModelCard.model_validate(card | {"confusion": [[1, 2, 3], [4, 5, 6]]})


def test_a_model_with_too_many_classes_keeps_disagreement_rates_and_says_so(tmp_path):
    url = single_label_store(tmp_path, np.random.default_rng(4))
    many = [f"c{i}" for i in range(MAX_CLASSES + 1)]
    card = ModelConfusion(many, np.eye(len(many)) * 10, "val split")
    r = report_with_card(url, card)
    assert {x.estimated_error.source for x in r.labelers} == {"disagreement"}
    assert any(f"more than the {MAX_CLASSES}" in note for note in r.notes)


def test_a_handful_of_labels_gets_an_interval_as_wide_as_a_handful_allows(tmp_path):
    """Three labels that all agree with the model: every bootstrap replicate is the same table, so the bootstrap
    alone says 0.000-0.000; the report's interval is at least the Wilson interval of three labels."""
    records = [record(f"h{i}", "hal", c, c, {c: 0.8}) for i, c in enumerate(CLASSES[:3])]
    url = fill(f"sqlite:///{tmp_path / 'h.db'}", records)
    card = ModelConfusion(CLASSES, np.array([[80, 10, 10, 0], [10, 80, 10, 0], [10, 10, 80, 0], [0, 0, 0, 1]]), "v")
    raw = error_rates(labeler_tables([("hal", c, c, 1) for c in CLASSES[:3]], CLASSES), card.counts)["hal"]
    assert raw.high - raw.low < 0.05  # the bootstrap's own interval
    r = report_with_card(url, card)
    [hal] = r.labelers
    e = hal.estimated_error
    assert e.source == "model" and e.rate == pytest.approx(raw.rate)
    floor = wilson(raw.rate * 3, 3)
    assert floor is not None and e.low <= floor[0] + 1e-12 and e.high >= floor[1] - 1e-12 and e.high > 0.5
