"""Several labels of one image (training.items): the posterior reads them together, a checked label is the
image's truth, and agreement shows a labeler whose errors are the model's, which one label per image cannot."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from labelaudit.training.items import NO_CHECK, find_items, with_checks
from labelaudit.training.methods.crowd import class_posterior, em_transitions, initial_transitions
from labelaudit.training.student import teacher_targets
from labelaudit.training.transition import labeler_error_rates, labeler_transition_matrices

from .test_student import _task, _trainer

K = 4


def test_items_are_found_only_when_an_image_repeats_and_carry_its_checked_label():
    assert find_items(np.array(["a", "b", "c"]), np.array([0, 1, 2]), np.array([False, True, False])) is None
    items = find_items(np.array(["a", "b", "a", "c", "b"]), np.array([0, 1, 2, 3, 3]), np.array([0, 1, 0, 0, 0], bool))
    assert items.count == 3
    assert items.of_row[0] == items.of_row[2] and items.of_row[1] == items.of_row[4]
    assert len({items.of_row[0], items.of_row[1], items.of_row[3]}) == 3
    np.testing.assert_array_equal(items.checked, [NO_CHECK, 1, NO_CHECK, NO_CHECK, 1])  # b's checked label: 1
    np.testing.assert_array_equal(items.rows_first(np.array([4, 2, 1, 0, 3])), [4, 2, 3])


def test_the_posterior_multiplies_what_each_label_of_an_image_says():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    t_a = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    t_b = torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0])  # rows 0 and 1: one image labeled 1 by a and by b; row 2 another image
    t = torch.stack([t_a, t_b, t_a])
    q = class_posterior(p, t, labels, items=torch.tensor([0, 0, 1]))

    both = np.array([0.5 * 0.1 * 0.4, 0.3 * 0.6 * 0.8, 0.2 * 0.1 * 0.3])  # p(i) T_a[i, 1] T_b[i, 1]
    alone = np.array([0.1 * 0.8, 0.1 * 0.2, 0.8 * 0.1])  # p(i) T_a[i, 0]
    np.testing.assert_allclose(q[0].numpy(), both / both.sum())
    np.testing.assert_allclose(q[1].numpy(), both / both.sum())  # every row of the image: the same posterior
    np.testing.assert_allclose(q[2].numpy(), alone / alone.sum())
    # one row per image: the single-label posterior, as without items
    torch.testing.assert_close(class_posterior(p, t, labels, items=torch.arange(3)), class_posterior(p, t, labels))


def _instance_labeler(multi: bool, seed: int = 0):
    """1,500 images. A model that on its 40% hard images puts 0.6 on a wrong class (``truth + 1``); the
    ``instance`` labeler gives exactly that wrong class on the hard images it labels (its errors ARE the
    model's: true error 0.4), two careful labelers are right 90% of the time. Each image has one labeler;
    with ``multi`` every image the instance labeler labels gets the two careful labelers' labels too."""
    rng = np.random.default_rng(seed)
    n = 1_500
    truth = rng.integers(0, K, n)
    hard = rng.random(n) < 0.4
    wrong = (truth + 1) % K
    probs = np.full((n, K), 0.1 / (K - 2))
    probs[np.arange(n), truth] = np.where(hard, 0.3, 0.9)
    probs[np.arange(n), wrong] = np.where(hard, 0.6, 0.1 / (K - 2))
    probs /= probs.sum(1, keepdims=True)
    owner = rng.choice(["instance", "careful-1", "careful-2"], n)
    rows = [(i, str(owner[i])) for i in range(n)]
    if multi:
        rows += [(i, c) for i in np.flatnonzero(owner == "instance") for c in ("careful-1", "careful-2")]
    image = np.array([i for i, _ in rows])
    who = np.array([w for _, w in rows])
    careful_wrong = (truth[image] + rng.integers(1, K, len(rows))) % K
    labels = np.where(
        who == "instance",
        np.where(hard[image], wrong[image], truth[image]),
        np.where(rng.random(len(rows)) < 0.9, truth[image], careful_wrong),
    )
    return image, who, labels, probs[image], truth


def _instance_error(t_instance: np.ndarray) -> float:
    return float(1 - np.diag(t_instance).mean())  # classes are balanced: the labeler's error rate


def _realised(who: np.ndarray, labels: np.ndarray, truth_of_row: np.ndarray, labeler: str) -> float:
    mine = who == labeler
    return float((labels[mine] != truth_of_row[mine]).mean())


@pytest.mark.parametrize("multi", [False, True])
def test_agreement_shows_a_labeler_whose_errors_are_the_models(multi):
    image, who, labels, probs, truth = _instance_labeler(multi)
    realised = _realised(who, labels, truth[image], "instance")  # about 0.4
    items = image if multi else None
    names = sorted(set(who))
    groups = torch.as_tensor(np.searchsorted(names, who))
    start = initial_transitions(len(names), K, "cpu")
    items_t = None if items is None else torch.as_tensor(items)
    crowd = em_transitions(torch.as_tensor(probs), torch.as_tensor(labels), groups, start, 50, items=items_t)
    card, _ = labeler_transition_matrices(probs, labels, who, K, em_steps=50, items=items)

    estimates = [_instance_error(crowd[names.index("instance")].numpy()), _instance_error(card["instance"])]
    if multi:  # the careful labelers outvote the model on the hard images: the error is seen as it is
        assert all(abs(e - realised) < 0.05 for e in estimates), (estimates, realised)
    else:  # its label and the model agree, so one label per image reads it as careful
        assert all(e < realised - 0.2 for e in estimates), (estimates, realised)


def test_a_checked_label_is_the_images_truth_and_measures_its_labelers():
    image, who, labels, probs, truth = _instance_labeler(multi=False)
    checked = np.full(len(image), NO_CHECK)
    qa = who == "instance"  # a QA pass checked every image the instance labeler labeled
    checked[qa] = truth[image[qa]]
    # (find_items' checked column, as a QA row beside each of those labels would give it)
    items = type("Checked", (), {"checked": checked})()
    prior = with_checks(torch.as_tensor(probs), items, np.arange(len(image))).numpy()

    np.testing.assert_array_equal(prior[qa].argmax(1), truth[image[qa]])
    np.testing.assert_array_equal(prior[~qa], probs[~qa])  # the rest keep the model's belief
    card, _ = labeler_transition_matrices(prior, labels, who, K, em_steps=50)
    assert abs(_instance_error(card["instance"]) - _realised(who, labels, truth[image], "instance")) < 0.05


def test_a_student_trains_once_per_image_on_the_posterior_of_all_its_labels(monkeypatch):
    # images 0-7 trusted; 8-407 labeled by "careful" (images 8-207 also by "other"), both right 80% of the
    # time; image 408 by "careful" and checked (its trusted row comes last)
    rng = np.random.default_rng(0)
    truth_img = rng.integers(0, K, 409)
    image = np.concatenate([np.arange(409), np.arange(8, 208), [408]])
    labels = np.where(rng.random(len(image)) < 0.8, truth_img[image], (truth_img[image] + 1) % K)
    labels[:8] = truth_img[:8]
    labels[-1] = truth_img[408]
    ids = np.array(["qa"] * 8 + ["careful"] * 401 + ["other"] * 200 + ["qa"])
    trusted = np.zeros(len(image), bool)
    trusted[:8] = trusted[-1] = True
    data = _task(truth_img[image], labels, ids, trusted=8)
    data.untrusted_rows = np.flatnonzero(~trusted)
    data.trusted_rows = np.flatnonzero(trusted)
    data.is_trusted = torch.as_tensor(trusted)
    data.items = find_items(image.astype(str), labels, trusted)
    trainer = _trainer(data)
    probs = torch.full((len(image), K), 0.5 / (K - 1))  # a teacher that leans to the truth
    probs[np.arange(len(image)), truth_img[image]] = 0.5
    monkeypatch.setattr(trainer, "predict", lambda rows, batch=512: probs[rows])

    rows, targets = teacher_targets(trainer)

    np.testing.assert_array_equal(rows, np.arange(8, 408))  # one row per image; the checked image 408 left out
    right = targets.argmax(1).numpy() == truth_img[8:408]
    # one label: the posterior follows it, right ~80% of the time; two read together: a second label outvotes
    # or (disagreeing) leaves it to the teacher, right ~95% of the time
    assert right[:200].mean() > right[200:].mean() + 0.08, (right[:200].mean(), right[200:].mean())


def test_a_manifest_with_several_labels_per_image_trains_end_to_end(tiny_data, tmp_path, monkeypatch, note_recorder):
    import json

    from labelaudit.training import student as student_module
    from labelaudit.training.methods import crowd as crowd_module
    from labelaudit.training.train import TrainConfig, train

    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    for r in rows:
        r["image"] = str(tiny_data / r["image"])
    at = [i for i, r in enumerate(rows) if r["split"] == "train" and not r["trusted"]]
    labeled = [rows[i] for i in at]
    more = [r | {"labeler_id": "labeler-extra", "label": r["true_label"]} for r in labeled[:100]]
    checked = [r | {"labeler_id": "qa", "label": r["true_label"], "trusted": True} for r in labeled[:5]]
    manifest = tmp_path / "multi.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + more + checked))
    seen: list[int] = []
    items_given: list[bool] = []
    loss, em = student_module.Student.loss, crowd_module.em_transitions
    monkeypatch.setattr(
        student_module.Student, "loss", lambda self, b: (seen.extend(b.untrusted.tolist()), loss(self, b))[1]
    )
    monkeypatch.setattr(
        crowd_module,
        "em_transitions",
        lambda *a, **kw: (items_given.append(kw.get("items") is not None), em(*a, **kw))[1],
    )
    cfg = TrainConfig(
        method="crowd", epochs=1, device="cpu", student_rounds=1, student_threshold=0.0, min_labeler_items=20
    )

    result = train(manifest, init=None, out=tmp_path / "run", cfg=cfg, reporter=note_recorder)

    assert items_given and all(items_given)  # crowd's EM read every image's labels together
    said = f"several labels: 100 of {len(labeled) + 10:,} images carry 2-3 (205 labels; 5 of these images checked), read together"
    assert said in note_recorder.notes, note_recorder.notes
    assert result.meta.labeler_counts["labeler-extra"] == 100
    assert sorted(seen) == at[5:]  # the student: each image's first row once, the 5 checked images not


def test_a_qa_pass_in_the_manifest_gives_the_card_audited_labeler_rates(tiny_data, tmp_path, note_recorder):
    """Checked rows beside 30 of one labeler's labels (a QA pass, as ``labelaudit data --qa`` writes them): a
    whole training run's card reads that labeler's rate off the checks; the others keep the model's."""
    import json

    from labelaudit.training.train import TrainConfig, train

    rows = [json.loads(line) for line in (tiny_data / "task_b.jsonl").read_text().splitlines()]
    for r in rows:
        r["image"] = str(tiny_data / r["image"])
    labeled = [r for r in rows if r["split"] == "train" and not r["trusted"]]
    target = Counter(r["labeler_id"] for r in labeled).most_common(1)[0][0]
    checked = [
        r | {"labeler_id": "qa", "label": r["true_label"], "trusted": True}
        for r in labeled
        if r["labeler_id"] == target
    ][:30]
    manifest = tmp_path / "qa.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + checked))

    result = train(
        manifest,
        init=None,
        out=tmp_path / "run",
        cfg=TrainConfig(method="crowd", epochs=1, device="cpu", trusted_per_step=8),  # the checks cycle 8 a step
        reporter=note_recorder,
    )

    rates = result.meta.labeler_error_rates
    assert (rates[target].source, rates[target].answers) == ("audit", 30)
    assert {r.source for a, r in rates.items() if a != target} == {"model"}
    truth = [r["label"] != r["true_label"] for r in labeled if r["labeler_id"] == target]
    assert rates[target].low <= float(np.mean(truth)) <= rates[target].high, (rates[target], np.mean(truth))


def test_the_cards_error_rate_comes_from_agreement_where_images_carry_several_labels():
    image, who, labels, probs, truth = _instance_labeler(multi=True)
    predicted = probs.argmax(1)
    confusion = np.zeros((K, K), dtype=np.int64)  # the model's confusion, as clean held-out images show it
    np.add.at(confusion, (truth[image], predicted), 1)

    alone = labeler_error_rates(predicted, labels, who, confusion)
    together = labeler_error_rates(predicted, labels, who, confusion, items=image)

    for labeler in ("instance", "careful-1", "careful-2"):
        realised = _realised(who, labels, truth[image], labeler)
        rate = together[labeler]
        assert rate.source == "agreement" and abs(rate.rate - realised) < 0.06
    realised = _realised(who, labels, truth[image], "instance")
    assert together["instance"].low < realised < together["instance"].high  # (intervals' coverage: test_dawid_skene)
    assert alone["instance"].source == "model" and alone["instance"].rate < realised - 0.2  # the model's blind spot
    for careful in ("careful-1", "careful-2"):
        assert together[careful].disagreement == alone[careful].disagreement  # the raw figure stays the model's


def test_the_cards_error_rate_comes_from_a_qa_sample_of_a_labelers_own_images():
    """One label per image, and a QA pass that checked a random fifth of the images: each labeler's rate comes
    from its checked labels (the model's guess narrowing it), the instance labeler's included, whose mistakes
    the model shares; labelers with fewer than 20 checked labels keep the model's rate."""
    image, who, labels, probs, truth = _instance_labeler(multi=False)
    predicted = probs.argmax(1)
    confusion = np.zeros((K, K), dtype=np.int64)
    np.add.at(confusion, (truth[image], predicted), 1)
    checked = np.full(len(image), NO_CHECK)
    qa = np.random.default_rng(5).random(len(image)) < 0.2
    checked[qa] = truth[image[qa]]

    alone = labeler_error_rates(predicted, labels, who, confusion)
    audited = labeler_error_rates(predicted, labels, who, confusion, checked=checked)
    for labeler in ("instance", "careful-1", "careful-2"):
        realised = _realised(who, labels, truth[image], labeler)
        rate = audited[labeler]
        assert rate.source == "audit" and rate.answers == int((qa & (who == labeler)).sum())
        assert rate.low <= realised <= rate.high and abs(rate.rate - realised) < 0.08, (labeler, rate, realised)
        assert rate.disagreement == alone[labeler].disagreement
    realised = _realised(who, labels, truth[image], "instance")
    assert alone["instance"].rate < realised - 0.2 < audited["instance"].rate - 0.1  # the blind spot, then not

    few = np.where(who == "careful-1", NO_CHECK, checked)  # careful-1's checks withdrawn
    few[np.flatnonzero(who == "careful-1")[:10]] = truth[image[who == "careful-1"]][:10]
    assert labeler_error_rates(predicted, labels, who, confusion, checked=few)["careful-1"].source == "model"


def test_crossfit_folds_hold_every_label_of_an_image_out_together(monkeypatch):
    from labelaudit.training.methods import METHODS
    from labelaudit.training.student import crossfit_probabilities
    from labelaudit.training.train import Trainer

    # 8 trusted images, then 60 images labeled by "careful", 40 of them again by "other" (rows 68-107)
    rng = np.random.default_rng(0)
    truth_img = rng.integers(0, K, 68)
    image = np.concatenate([np.arange(68), np.arange(8, 48)])
    labels = truth_img[image]
    ids = np.array(["qa"] * 8 + ["careful"] * 60 + ["other"] * 40)
    data = _task(truth_img[image], labels, ids, trusted=8)
    data.items = find_items(image.astype(str), labels, np.arange(len(image)) < 8)
    trainer = _trainer(data, epochs=1)
    trained: list[set[int]] = []
    fit = Trainer.fit

    def spy_fit(self, method, *, phase):
        trained.append(set(method.rows().tolist()))
        return fit(self, method, phase=phase)

    monkeypatch.setattr(Trainer, "fit", spy_fit)
    crossfit_probabilities(trainer, METHODS["ce"], folds=3)

    untrusted = set(data.untrusted_rows.tolist())
    for rows in trained:
        held = untrusted - rows
        assert held and not {image[r] for r in held} & {image[r] for r in rows}  # no image on both sides
