"""A setting the chosen method never reads is named in the run's notes, with what would read it, instead of
being silently ignored (``--trim-fraction`` with ``ce``, a student round's threshold without a round); a
setting outside its range is refused before anything runs (``--epochs 0`` used to save an untrained network,
``--batch-size 0`` to end in a ZeroDivisionError)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from labelaudit.training.config import ALLOWED, RANGES, TrainConfig, out_of_range, unknown_choice
from labelaudit.training.methods import METHODS, STUDENT_SETTINGS, ignored_settings
from labelaudit.training.methods.auto import CHOICES, with_choice
from labelaudit.training.train import _check_config, train


def test_defaults_and_a_methods_own_settings_are_never_named():
    for name, cls in METHODS.items():
        assert ignored_settings(TrainConfig(method=name), cls) == {}
    fasten = TrainConfig(method="fasten", rho=0.9, per_labeler=True, held_out_estimate=True)
    assert ignored_settings(fasten, METHODS["fasten"]) == {}
    crowdmix = TrainConfig(method="crowdmix", mixup_alpha=0.3, trim_fraction=0.2, posterior_weight=0.5)
    assert ignored_settings(crowdmix, METHODS["crowdmix"]) == {}


def test_another_methods_settings_are_named_with_the_methods_that_read_them():
    cfg = TrainConfig(method="ce", trim_fraction=0.2, mixup_alpha=0.3, rho=0.9)
    assert ignored_settings(cfg, METHODS["ce"]) == {
        "mixup_alpha": ["crowdmix", "mentormix", "student_rounds >= 1"],
        "rho": ["fasten"],
        "trim_fraction": ["crowd", "crowdmix"],
    }
    assert list(ignored_settings(cfg, METHODS["crowd"])) == ["mixup_alpha", "rho"]  # crowd does not mix


def test_optional_parts_settings_count_only_when_the_part_is_on():
    student = TrainConfig(method="ce", student_threshold=0.7, mixup_alpha=0.3)
    assert set(ignored_settings(student, METHODS["ce"])) == {"student_threshold", "mixup_alpha"}
    assert ignored_settings(TrainConfig(**{**vars(student), "student_rounds": 1}), METHODS["ce"]) == {}
    assert "mixup_alpha" in STUDENT_SETTINGS  # the student mixes its batches, whatever the first round's method

    semi = TrainConfig(method="crowd", ema_decay=0.9, doubt_threshold=0.7)
    assert set(ignored_settings(semi, METHODS["crowd"])) == {"ema_decay", "doubt_threshold"}
    semi_on = TrainConfig(**{**vars(semi), "unlabeled_weight": 1.0})
    assert ignored_settings(semi_on, METHODS["crowd"]) == {}
    assert list(ignored_settings(semi_on, METHODS["ce"])) == ["doubt_threshold"]  # ce doubts no label


def test_what_auto_sets_is_read_by_what_it_chose():
    for choice in CHOICES.values():
        cfg = with_choice(TrainConfig(method="auto"), choice)
        assert ignored_settings(cfg, METHODS[choice.method]) == {}


def test_a_run_says_which_settings_did_nothing(tiny_data, tmp_path, note_recorder):
    cfg = TrainConfig(method="auto", epochs=1, device="cpu", trim_fraction=0.2, rho=0.9)
    result = train(tiny_data / "task_a.jsonl", init=None, out=tmp_path, cfg=cfg, reporter=note_recorder)

    assert result.meta.method == "ce"  # task A: no trusted set, no labeler ids
    notes = note_recorder.notes
    said = "\n".join(notes)
    assert "trim_fraction=0.2 does nothing in this run (ce); it applies with crowd or crowdmix" in said
    assert "rho=0.9 does nothing in this run (ce); it applies with fasten" in said
    assert sum("does nothing" in n for n in notes) == 2


def test_settings_out_of_range_are_refused_before_training_each_named():
    with pytest.raises(ValueError) as info:
        _check_config(TrainConfig(epochs=0, batch_size=0, mixup_alpha=-1.0, posterior_weight=2.0))
    said = str(info.value)
    assert said.startswith("settings out of range: ")
    for part in (
        "epochs=0 (must be >= 1)",
        "batch_size=0 (must be >= 1)",
        "mixup_alpha=-1.0 (must be >= 0)",
        "posterior_weight=2.0 (must be in [0, 1])",
    ):
        assert part in said


@pytest.mark.parametrize(
    ("name", "fine", "refused"),
    [
        ("lr", [1e-6, 1.0], [0.0, -1.0]),
        ("momentum", [0.0, 0.99], [1.0, -0.1]),
        ("trim_fraction", [0.0, 0.99], [1.0, -0.1]),
        ("trusted_weight", [0.0, 0.9], [1.0, -0.1]),
        ("mentormix_gamma", [0.01, 1.0], [0.0, 1.1]),
        ("posterior_temperature", [0.1, 2.0], [0.0]),
        ("rho", [0.0, 1.01], [-0.1]),  # above 1: never correct a label (a documented use)
        ("ema_decay", [0.0, 1.0], [1.1]),
        ("student_threshold", [0.0, 1.0], [1.5]),
        ("student_labeled_threshold", [0.0, 1.0], [-0.1, 1.5]),
        ("student_unlabeled_threshold", [0.0, 1.0], [-0.1, 1.5]),
        ("min_labeler_items", [1], [0]),
    ],
)
def test_each_range_takes_its_edges_and_refuses_beyond(name, fine, refused):
    for value in fine:
        assert out_of_range(TrainConfig(**{name: value})) == []
    for value in refused:
        assert [b.split("=")[0] for b in out_of_range(TrainConfig(**{name: value}))] == [name]


def test_every_range_is_a_setting_and_the_defaults_fit():
    assert set(RANGES) <= {f.name for f in fields(TrainConfig)}
    assert out_of_range(TrainConfig()) == []


def test_every_word_setting_refuses_another_word_naming_its_choices():
    assert set(ALLOWED) <= {f.name for f in fields(TrainConfig)}
    assert unknown_choice(TrainConfig()) == []
    for name, choices in ALLOWED.items():
        for word in choices:
            assert unknown_choice(TrainConfig(**{name: word})) == []
        assert unknown_choice(TrainConfig(**{name: "everything"})) == [
            f"{name}='everything' (choose from {', '.join(choices)})"
        ]


def test_an_unknown_word_is_refused_before_training_with_the_choices():
    with pytest.raises(ValueError) as info:
        _check_config(TrainConfig(student_trusted="all", loader="disk"))
    assert str(info.value) == (
        "unknown settings: student_trusted='all' (choose from half, rows); "
        "loader='disk' (choose from auto, memory, stream)"
    )
