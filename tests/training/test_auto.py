"""``--method auto``: the choice per data shape (trusted set or not, labeler ids or not), and a real run
that records what it chose and why."""

from __future__ import annotations

import numpy as np
import pytest

from labelaudit.training.methods.auto import CHOICES, Choice, choose_method, with_choice
from labelaudit.training.methods.base import labelers_with_matrices
from labelaudit.training.methods.fasten import POOLED_GROUP, labeler_groups
from labelaudit.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(trusted: int, labelers: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    ids = ["qa"] * trusted + [name for name, n in labelers.items() for _ in range(n)]
    return np.array([True] * trusted + [False] * (len(ids) - trusted)), np.array(ids)


@pytest.mark.parametrize(
    ("trusted", "labelers", "expected"),
    [
        (50, {"ann": 300, "bob": 300}, "crowdmix"),  # both: per-labeler matrices with a trusted anchor
        (50, {"": 600}, "crowdmix"),  # a trusted set, labels without labeler ids: one matrix for them all
        (50, {"ann": 590, "bob": 10}, "crowdmix"),  # no crowd: ann's matrix and a pooled one for bob
        (3, {"ann": 300, "bob": 300}, "crowdmix"),  # fewer trusted rows than classes: the labelers' EM alone
        (0, {"ann": 300, "bob": 300}, "crowdmix"),  # no trusted set: the labelers' matrices still come from EM
        (0, {"ann": 590, "bob": 10}, "ce"),  # one labeler with a matrix and no trusted set: nothing to anchor it
        (0, {"": 600}, "ce"),
    ],
)
def test_auto_chooses_by_what_the_data_has(trusted, labelers, expected):
    is_trusted, ids = rows(trusted, labelers)
    choice = choose_method(trusted=is_trusted, labeler_ids=ids, classes=10, min_labeler_items=100)
    assert choice.method == expected
    assert choice.reason.startswith("auto: ") and choice.reason.endswith(f"-> {choice.describe()}")
    assert choice.describe().startswith(expected)


def test_a_choice_brings_its_measured_settings_but_a_value_the_user_gave_wins():
    choice = Choice("crowdmix", {"mixup_alpha": 0.3, "student_rounds": 1}, "auto: ... -> crowdmix")
    plain = with_choice(TrainConfig(method="auto"), choice)
    assert (plain.method, plain.mixup_alpha, plain.student_rounds) == ("crowdmix", 0.3, 1)
    assert plain.method_choice == "auto: ... -> crowdmix"
    mine = with_choice(TrainConfig(method="auto", mixup_alpha=0.5, epochs=3), choice)
    assert (mine.mixup_alpha, mine.student_rounds, mine.epochs) == (0.5, 1, 3)


def test_every_data_shape_has_a_choice():
    assert set(CHOICES) == {(t, lab) for t in (True, False) for lab in (True, False)}


def test_an_auto_run_records_the_method_it_chose_and_why(tiny_data, tmp_path):
    cfg = TrainConfig(method="auto", epochs=1, device="cpu", min_labeler_items=20)  # tiny: ~60 labels each
    result = train(tiny_data / "task_b.jsonl", init=None, out=tmp_path, cfg=cfg)
    best = CHOICES[(True, True)]
    assert result.meta.method == best.method  # task B: five labelers and a trusted set
    assert result.meta.config["method_choice"].endswith(f"-> {best.describe()}")
    assert {k: result.meta.config[k] for k in best.settings} == best.settings
    no_trusted = train(
        tiny_data / "task_a.jsonl",
        init=None,
        out=tmp_path / "a",
        cfg=TrainConfig(method="auto", epochs=1, device="cpu"),
    )
    assert no_trusted.meta.method == CHOICES[(False, False)].method


def test_labels_without_a_labeler_id_share_the_pooled_matrix_however_many_they_are():
    """'' is no labeler: its rows join the pool with the small labelers, in auto's count and crowd's groups."""
    is_trusted, ids = rows(5, {"ann": 300, "": 600, "bob": 10})
    untrusted = np.flatnonzero(~is_trusted)
    assert labelers_with_matrices(ids, untrusted, 100) == ["ann"]
    assert labeler_groups(ids, untrusted, 100) == ["ann", POOLED_GROUP]
    assert labeler_groups(ids, untrusted, 5) == ["ann", "bob", POOLED_GROUP]


def test_trusted_labels_alone_get_ce_whatever_the_unlabeled_rows_carry():
    """Images without a label (``labeled`` False) are no labeler's labels: with only trusted labels beside
    them there is no noise to model, whatever labeler ids the unlabeled rows carry."""
    is_trusted, ids = rows(50, {"ann": 300, "bob": 300})
    labeled = is_trusted.copy()  # ann's and bob's rows are images without a label
    choice = choose_method(trusted=is_trusted, labeled=labeled, labeler_ids=ids, classes=10, min_labeler_items=100)
    assert choice.method == "ce" and choice.settings == {}
    assert choice.reason == "auto: 50 trusted rows and no labeler's label: no noise to model -> ce"
    labeled[-300:] = True  # bob's rows labeled after all: one labeler with a matrix beside the trusted set
    mixed = choose_method(trusted=is_trusted, labeled=labeled, labeler_ids=ids, classes=10, min_labeler_items=100)
    assert mixed.method == "crowdmix" and "no two labelers" in mixed.reason
