"""``labelaudit data``: task A and task B from Debian's Fashion-MNIST, with simulated noisy labelers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelaudit.cli.common import console, fail, progress_bars

SIZES = {  # per_task, val_size, test_size
    "tiny": (1_500, 300, 1_000),
    "small": (6_000, 1_000, 2_000),
    "full": (30_000, 2_000, 10_000),
}


def build_data(
    out: Path,
    *,
    noise: float,
    seed: int,
    size: str,
    trusted_fraction: float,
    unlabeled: int = 0,
    multi: float = 0.0,
    qa: float = 0.0,
) -> None:
    """Write the two tasks with a progress bar and say where they are; ``ValueError`` or ``FileNotFoundError``
    (no Fashion-MNIST package) says why not."""
    from labelaudit.training.datasets import fashion_mnist

    if size not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}")
    per_task, val_size, test_size = SIZES[size]
    with progress_bars() as progress:
        task = progress.add_task("writing images", total=2 * per_task + test_size + unlabeled, info="")
        report = fashion_mnist.build(
            out,
            noise=noise,
            seed=seed,
            per_task=per_task,
            val_size=val_size,
            test_size=test_size,
            trusted_fraction=trusted_fraction,
            unlabeled=unlabeled,
            multi=multi,
            qa=qa,
            progress=lambda n: progress.update(task, advance=n),
        )
    console.print(
        f"task A: {report.task_a_manifest}\ntask B: {report.task_b_manifest}  "
        f"(noise requested {report.noise_requested:.2f}, actual {report.noise_actual:.3f}; {report.counts})"
    )


def data(
    out: Annotated[Path, typer.Option(help="Folder to write images, manifests and the labelers' truth to.")] = Path(
        "data"
    ),
    noise: Annotated[float, typer.Option(help="Fraction of wrong labels in task B's training labels.")] = 0.4,
    seed: Annotated[int, typer.Option(help="Data seed (the recipe is deterministic for a seed).")] = 0,
    size: Annotated[str, typer.Option(help="tiny | small | full (30,000 images per task).")] = "small",
    trusted_fraction: Annotated[
        float, typer.Option(help="Share of task B's training images checked by hand (0: no trusted set).")
    ] = 0.01,
    unlabeled: Annotated[
        int, typer.Option(help="More task-B training images without a label (semi-supervised training).")
    ] = 0,
    multi: Annotated[
        float,
        typer.Option(help="Share of task B's labeled training images that get two more labels from other labelers."),
    ] = 0.0,
    qa: Annotated[
        float,
        typer.Option(
            help="Share of task B's labeled training images a QA pass checks (a trusted row with the true label "
            "beside the labeler's): the model card reads each labeler's error rate off its checked images."
        ),
    ] = 0.0,
) -> None:
    """Build task A and task B from Debian's Fashion-MNIST, with simulated noisy labelers."""
    try:
        build_data(
            out,
            noise=noise,
            seed=seed,
            size=size,
            trusted_fraction=trusted_fraction,
            unlabeled=unlabeled,
            multi=multi,
            qa=qa,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise fail(exc) from exc
