"""The augmentation policies: what each may and may not do to an image (a mirrored digit is another digit)."""

from __future__ import annotations

import pytest
import torch

from labelaudit.training.augment import augment, strong_augment


def _left_bright(n: int = 64, side: int = 28) -> torch.Tensor:
    """(n, 1, side, side): the left half +1, the right half -1; a mirror swaps them."""
    x = -torch.ones(n, 1, side, side)
    x[..., : side // 2] = 1.0
    return x


def _left_minus_right(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3))


def test_none_returns_the_images() -> None:
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(augment(x, "none"), x)


def test_flip_mirrors_some_images_and_changes_nothing_else() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8)
    out = augment(x, "flip")
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < 32


def test_shift_never_mirrors() -> None:
    torch.manual_seed(0)
    assert bool((_left_minus_right(augment(_left_bright(), "shift")) > 0).all())


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        augment(torch.zeros(1, 1, 4, 4), "rotate")


def test_strong_view_mirrors_only_when_the_policy_does() -> None:
    torch.manual_seed(0)
    kept = _left_minus_right(strong_augment(_left_bright(), flip=False))
    assert bool((kept > 0).all()), "a policy without flips must not get mirrored strong views"
    torch.manual_seed(0)
    both = _left_minus_right(strong_augment(_left_bright(), flip=True))
    assert 0 < int((both < 0).sum()) < len(both)
