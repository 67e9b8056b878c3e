"""Error rates from agreement between labelers: the one-coin moments recover known accuracies, stay
unidentified without a triangle of labelers, and flag a labeler whose mistakes the model shares (which
disagreement with the model cannot see)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from labelaudit.agreement import above_pool, estimate
from labelaudit.serving.core.store import open_store
from labelaudit.serving.report.build import build_report
from labelaudit.serving.report.job import night_window
from tests.report.reportkit import CLASSES, NIGHT, fill, record, report_of


def simulated_pairs(accuracy: dict[str, float], items: int, k: int, seed: int = 0):
    """Three labelers per item (one-coin: wrong labels uniform over the other classes) -> the pair table."""
    rng = np.random.default_rng(seed)
    ids = sorted(accuracy)
    table: dict[tuple[str, str], list[int]] = {}
    for _ in range(items):
        truth = rng.integers(k)
        who = rng.choice(ids, size=3, replace=False)
        said = {a: truth if rng.random() < accuracy[a] else (truth + rng.integers(1, k)) % k for a in who}
        for a, b in itertools.combinations(sorted(who), 2):
            t = table.setdefault((a, b), [0, 0])
            t[0] += int(said[a] == said[b])
            t[1] += 1
    return [(a, b, x, n) for (a, b), (x, n) in table.items()]


def test_moments_recover_known_error_rates():
    accuracy = {"a": 0.95, "b": 0.8, "c": 0.6, "d": 0.5, "e": 0.1}
    est = estimate(simulated_pairs(accuracy, 6_000, k=10), k=10)
    got = dict(zip(est.labelers, est.error, strict=True))
    for a, q in accuracy.items():
        assert got[a] == pytest.approx(1 - q, abs=0.04)
        i = est.labelers.index(a)
        assert est.low[i] <= 1 - q + 0.02 and 1 - q - 0.02 <= est.high[i]
    p = above_pool(est, dict.fromkeys(accuracy, 100))
    assert p["e"] < 1e-6 and p["a"] > 0.99


def test_a_labeler_outside_every_triangle_is_not_identified():
    pairs = [("a", "b", 90, 100), ("b", "c", 80, 100), ("a", "c", 85, 100), ("c", "d", 50, 100)]
    est = estimate(pairs, k=10)
    ids = dict(zip(est.labelers, est.error, strict=True))
    assert not np.isnan(ids["a"]) and np.isnan(ids["d"])  # d shares items with c alone


def test_a_labeler_whose_mistakes_the_model_shares_is_flagged_by_agreement(tmp_path):
    """'sly' is wrong on a third of its items, always as the model is: disagreement with the model is 0."""
    rng = np.random.default_rng(1)
    records = []
    for i in range(300):
        truth, wrong = CLASSES[i % 3], CLASSES[(i + 1) % 3]
        sly_wrong = rng.random() < 1 / 3
        model = wrong if sly_wrong else truth
        p = {c: 0.05 for c in CLASSES[:3]} | {model: 0.9}
        for labeler in ("sly", f"h{i % 4}", f"h{(i + 1) % 4}"):
            human = (wrong if sly_wrong else truth) if labeler == "sly" else truth
            if labeler != "sly" and rng.random() < 0.1:
                human = wrong
            records.append(record(f"x{i}", labeler, human, model, p, flag=human != model, score=0.5))
    url = fill(f"sqlite:///{tmp_path / 'a.db'}", records)
    store = open_store(url)
    try:
        r = build_report(store, window=night_window(NIGHT), store_kind="sqlite", classes=CLASSES, class_source="t")
    finally:
        store.close()
    rows = {x.labeler_id: x for x in r.labelers}
    sly = rows["sly"]
    assert sly.test == "agreement z-test" and sly.estimated_error.source == "agreement"
    assert sly.estimated_error.rate == pytest.approx(1 / 3, abs=0.08)
    assert r.flag_test.flagged == ["sly"]


POOL = {"careful": ("any", 0.05), "sloppy": ("any", 0.3)} | {f"conf-{i}": ("swap", 0.35) for i in (1, 2, 3)}


def look_alike_stream(items: int = 1_500, seed: int = 7):
    """Every item labeled by three of POOL; the confusers swap cat/dog and fox/owl. -> the records, each
    labeler's realised error rate, and the pair table the one-coin fit reads."""
    rng = np.random.default_rng(seed)
    swap = {0: 1, 1: 0, 2: 3, 3: 2}
    records, wrong, said_by = [], {a: [] for a in POOL}, {}
    for i in range(items):
        truth = int(rng.integers(4))
        p = {c: 0.1 for c in CLASSES} | {CLASSES[truth]: 0.7}
        for labeler in rng.choice(sorted(POOL), 3, replace=False):
            how, rate = POOL[labeler]
            said = truth
            if rng.random() < rate:
                said = swap[truth] if how == "swap" else int((truth + rng.integers(1, 4)) % 4)
            wrong[labeler].append(said != truth)
            said_by[(i, labeler)] = said
            records.append(record(f"x{i}", labeler, CLASSES[said], CLASSES[truth], p, flag=said != truth, score=0.5))
    pairs = []
    for a, b in itertools.combinations(sorted(POOL), 2):
        both = [i for i in range(items) if (i, a) in said_by and (i, b) in said_by]
        pairs.append((a, b, sum(said_by[(i, a)] == said_by[(i, b)] for i in both), len(both)))
    return records, {a: float(np.mean(w)) for a, w in wrong.items()}, pairs


def night_report(tmp_path, records, db: str = "a", **options):
    """NIGHT's report of ``records`` in a fresh SQLite store ``db``, with ``build_report``'s ``options``."""
    return report_of(fill(f"sqlite:///{tmp_path / f'{db}.db'}", records), **options)


def test_the_report_reads_look_alike_confusers_with_full_matrices(tmp_path):
    """Three labelers who all mix up cat/dog and fox/owl agree on their mistakes: the one-coin fit to the pair
    table reads them as more careful than they are and the careful labeler as sloppier; the report's
    Dawid-Skene over the shared items' labels recovers every realised error rate."""
    records, realised, pairs = look_alike_stream()
    rows = {x.labeler_id: x.estimated_error for x in night_report(tmp_path, records).labelers}
    assert all(rows[a].source == "agreement" for a in POOL)
    errors = [abs(rows[a].rate - realised[a]) for a in POOL]
    assert np.mean(errors) < 0.025 and max(errors) < 0.06, (rows, realised)
    assert sum(rows[a].low <= realised[a] <= rows[a].high for a in POOL) >= 4

    one_coin = estimate(pairs, k=len(CLASSES))
    one_coin_errors = [abs(e - realised[a]) for a, e in zip(one_coin.labelers, one_coin.error, strict=True)]
    assert np.mean(errors) < np.mean(one_coin_errors) - 0.01, (errors, one_coin_errors)


def test_too_many_labelers_and_classes_for_full_matrices_fall_back_to_the_one_coin_fit(tmp_path, monkeypatch):
    """Dawid-Skene's step costs labelers x K²: above the bound the report keeps the one-coin fit and says so."""
    from labelaudit.serving.report import build

    monkeypatch.setattr(build, "DS_MAX_WORK", 5 * len(CLASSES) ** 2 - 1)
    records, _, pairs = look_alike_stream(items=600)
    r = night_report(tmp_path, records)
    fit = estimate(pairs, k=len(CLASSES))
    one_coin = dict(zip(fit.labelers, fit.error, strict=True))
    for row in r.labelers:
        assert row.estimated_error.source == "agreement"
        assert row.estimated_error.rate == pytest.approx(one_coin[row.labeler_id])
    assert any("one-coin" in note and "5 labelers sharing items, 4 classes" in note for note in r.notes), r.notes


def test_with_the_audit_sample_rate_relabel_answers_do_not_bias_the_rates(tmp_path):
    """Items the stream drew for the audit sample get two more labels at random; items whose first label the
    model disagreed with get one more (a relabel request's answer). Read together, the answers make every first
    labeler look wrong more often than it is; with the sample's rate the report reads the sampled items only."""
    from labelaudit.serving.core.relabel import in_audit_sample

    rng = np.random.default_rng(3)
    error = {"a": 0.1, "b": 0.25, "c": 0.15, "d": 0.3}
    records, wrong = [], {x: [] for x in error}
    for i in range(2_400):
        item, truth = f"r{i}", int(rng.integers(4))
        p = {c: 0.1 for c in CLASSES} | {CLASSES[truth]: 0.7}  # the model is right: a wrong label disagrees
        first, *others = rng.permutation(sorted(error))
        labelers = [first, *others[:2]] if in_audit_sample(item, 0.3) else [first]
        for j, who in enumerate(labelers):
            said = truth if rng.random() >= error[who] else int((truth + rng.integers(1, 4)) % 4)
            if j == 0 and len(labelers) == 1 and said != truth:
                labelers.append(others[0])  # the relabel request's answer
            wrong[who].append(said != truth)
            records.append(record(item, who, CLASSES[said], CLASSES[truth], p, flag=said != truth, score=0.5))
    realised = {x: float(np.mean(w)) for x, w in wrong.items()}
    mae = {}
    for rate in (0.0, 0.3):
        r = night_report(tmp_path, records, db=str(rate), audit_sample_rate=rate)
        rows = {x.labeler_id: x.estimated_error for x in r.labelers}
        assert all(rows[x].source == "agreement" for x in error)
        mae[rate] = np.mean([abs(rows[x].rate - realised[x]) for x in error])
        assert any("audit sample" in note for note in r.notes) == (rate > 0)
    assert mae[0.3] < 0.03 and mae[0.0] > mae[0.3] + 0.03, mae
