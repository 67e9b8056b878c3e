"""Shared fixtures for the training tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tensors this small run faster on one thread, and OpenMP spin-waits badly on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class NoteRecorder:
    """A training reporter that keeps the run's notes (what auto chose, what was ignored) and nothing else."""

    def __init__(self):
        self.notes: list[str] = []

    def phase(self, *args): ...
    def advance(self, *args): ...
    def epoch(self, *args): ...
    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.fixture
def note_recorder() -> NoteRecorder:
    return NoteRecorder()
