"""``labelaudit demo``: the whole job on real data, every part as it runs in production (the online half is
``labelaudit/demo.py``)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labelaudit.cli.common import console, fail, progress_bars
from labelaudit.cli.data import build_data
from labelaudit.cli.harvest import write_next_manifest
from labelaudit.cli.report import write_report
from labelaudit.cli.train import run_export, run_training
from labelaudit.errors import LabelAuditError

DEMO_EPOCHS = {"tiny": (2, 2), "small": (6, 8), "full": (15, 30)}  # classifier A, task B


def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path("labelaudit-demo"),
    full: Annotated[bool, typer.Option(help="Full size (30,000 images per task, more epochs; wants a GPU).")] = False,
    size: Annotated[
        str | None, typer.Option(help="tiny | small | full; overrides --full (tiny is for smoke tests).")
    ] = None,
    method: Annotated[
        str, typer.Option(help="Noise-robust method for task B; auto picks by what the data has (docs/methods.md).")
    ] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    arch: Annotated[
        str,
        typer.Option(
            help="Classifier A's network: cnn_small, or a torchvision:/timm: one (e.g. torchvision:resnet18), "
            "trained on task A from scratch at 3 channels."
        ),
    ] = "cnn_small",
    qa_budget: Annotated[
        int,
        typer.Option(
            help="Relabel requests a simulated reviewer answers, highest scores first, naming each request "
            "(the report's 'Relabel requests answered'); 0: none."
        ),
    ] = 300,
    audit_sample_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of the items, drawn by id, the stream asks a second opinion on; the simulated reviewer "
            "answers them all (the report's labeler error rates then come from those answers); 0: none.",
        ),
    ] = 0.05,
) -> None:
    """The whole job on real data: build task A/B, train classifier A, fine-tune on noisy task B, export
    to ONNX and a Triton repository, serve it, stream task B's labeled images through a real Kafka broker
    into the auditing consumer, write the report and the next training manifest (the reviewer's answers in it), and
    print where everything is with the headline numbers."""
    from labelaudit import demo as online  # httpx: the dev extra, not the serving image

    size = size or ("full" if full else "small")
    if size not in DEMO_EPOCHS:
        raise fail(ValueError(f"--size must be one of {sorted(DEMO_EPOCHS)}"))
    epochs_a, epochs_b = DEMO_EPOCHS[size]
    data_dir, repo = out / "data", out / "model_repository"
    for stale in (repo, out / "kafka", out / "audit.db", out / "audit.db-wal", out / "audit.db-shm"):
        if stale.is_dir():
            shutil.rmtree(stale)  # the demo owns its folder; a re-run starts its online half afresh
        elif stale.exists():
            stale.unlink()
    store_url = f"sqlite:///{(out / 'audit.db').resolve()}"
    started = datetime.now(UTC) - timedelta(minutes=1)
    try:
        build_data(data_dir, noise=0.4, seed=seed, size=size, trusted_fraction=0.01)
        console.rule("classifier A on task A (clean labels)")
        a = run_training(
            data_dir / "task_a.jsonl",
            "scratch",
            out / "runs/classifier_a",
            method="ce",
            epochs=epochs_a,
            seed=seed,
            arch=arch,
            channels=None if arch in ("cnn_small", "resnet_small") else 3,
        )
        console.rule(f"task B with noisy labels: {method} from classifier A")  # auto says what it chose
        b = run_training(
            data_dir / "task_b.jsonl",
            str(a.checkpoint),
            out / f"runs/{method}",
            method=method,
            epochs=epochs_b,
            seed=seed,
        )
        console.rule("export")
        exported = run_export(b.checkpoint, data_dir / "task_b.jsonl", repo, "labelaudit", "1", False)
        _print_summary(b.meta, exported)

        console.rule("serving: labelaudit serve")
        with online.gateway(repo, store_url, out / "gateway.log") as url:
            check = online.check_gateway(url, data_dir / "task_b.jsonl")
        _print_gateway(check)

        console.rule("the stream: Kafka broker, labelaudit produce, labelaudit consume")
        with online.local_broker(out / "kafka") as bootstrap, progress_bars() as progress:
            task = progress.add_task("auditing task B's labels", total=None, info=f"broker {bootstrap}")
            outcome = online.stream_task_b(
                bootstrap,
                repo,
                data_dir / "task_b.jsonl",
                store_url,
                out / "consumer.log",
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                audit_sample_rate=audit_sample_rate,
            )
            progress.update(task, description="a reviewer answers relabel requests", total=None)
            answered = online.answer_requests(
                bootstrap,
                repo,
                data_dir / "task_b.jsonl",
                store_url,
                out / "consumer-answers.log",
                budget=qa_budget,
                seed=seed,
                audit_sample_rate=audit_sample_rate,
            )
    except (LabelAuditError, ValueError, FileNotFoundError) as exc:
        raise fail(exc) from exc
    _print_stream(outcome, out, store_url)
    _print_answers(answered)
    console.rule("the report: labelaudit report")
    from labelaudit.serving.report.job import span_window

    try:
        write_report(
            span_window(started, datetime.now(UTC) + timedelta(minutes=1)),
            out=out / "reports",
            store_url=store_url,
            images=data_dir / "task_b.jsonl",
            model_repo=repo,
        )
        console.rule("the next training set: labelaudit harvest")
        manifest = data_dir / "task_b.jsonl"  # the stream's images are its images
        write_next_manifest(out / "next" / "task_b.jsonl", store_url=store_url, images=manifest, manifest=manifest)
    except (LabelAuditError, ValueError) as exc:
        raise fail(exc) from exc


def _print_gateway(check) -> None:
    table = Table(title=f"the gateway at {check.url} (stopped again)")
    for col in ("item", "top class", "p", "human label", "disagrees", "score"):
        table.add_column(col)
    for (item, top, p), verdict in zip(check.classified, check.audited, strict=True):
        table.add_row(
            item, top, f"{p:.3f}", verdict["human_label"], str(verdict["disagrees"]), f"{verdict['score']:.3f}"
        )
    console.print(table)


def _print_stream(outcome, out: Path, store_url: str) -> None:
    precision = outcome.truly_wrong_flagged / max(1, outcome.disagreements)
    recall = outcome.truly_wrong_flagged / max(1, outcome.truly_wrong)
    console.print(
        f"streamed {outcome.sent:,} labeled images through Kafka; audited {outcome.audited:,} in "
        f"{outcome.seconds:.0f}s ({outcome.audited / max(outcome.seconds, 1e-9):.0f} images/s)\n"
        f"relabel requests: {outcome.disagreements:,}; {precision:.0%} of them are truly wrong labels "
        f"(the simulation knows), and they catch {recall:.0%} of the {outcome.truly_wrong:,} wrong labels\n"
        f"audit store: {store_url}\nlogs: {out / 'gateway.log'}, {out / 'consumer.log'}"
    )


def _print_answers(answered) -> None:
    if answered.audit_sample:
        console.print(
            f"a reviewer (who errs {answered.reviewer_error:.0%} of the time) answered the {answered.audit_sample:,} "
            f"audit-sample requests, items drawn at random: {answered.audit_changed:,} "
            f"({answered.audit_changed / answered.audit_sample:.0%}) of the first labels changed"
        )
    if answered.answered:
        console.print(
            f"a reviewer answered the {answered.answered:,} highest-scoring relabel requests (each answer names "
            f"its request): {answered.changed:,} ({answered.changed / answered.answered:.0%}) gave the model's "
            f"label, and {answered.changed_right / max(1, answered.changed):.0%} of those are the true class (the "
            f"reviewer errs {answered.reviewer_error:.0%} of the time)"
        )


def _print_summary(meta, exported) -> None:
    m = meta.metrics
    table = Table(title="labelaudit demo: task B")
    for col in ("model", "clean val acc", "clean test acc", "trusted acc"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table.add_row(
        "classifier A, untouched", fmt(m.initial_val_acc), fmt(m.initial_test_acc), fmt(m.initial_trusted_acc)
    )
    rounds = meta.config.get("student_rounds", 0)
    student = f" + {rounds} student round{'s' if rounds > 1 else ''}" if rounds else ""
    table.add_row(f"{meta.method}{student} from classifier A", fmt(m.val_acc), fmt(m.test_acc), fmt(m.trusted_acc))
    console.print(table)
    labelers = Table(
        title="per labeler, on its training items: disagreement with the model, and its error rate "
        "(the model's measured mistakes taken out)"
    )
    for col in ("labeler", "items", "disagreement", "estimated error rate (95% interval)"):
        labelers.add_column(col)
    for lid, e in meta.labeler_error_rates.items():
        labelers.add_row(
            lid,
            f"{meta.labeler_counts.get(lid, 0):,}",
            f"{e.disagreement:.3f}",
            f"{e.rate:.3f} ({e.low:.3f}-{e.high:.3f})",
        )
    console.print(labelers)
    console.print(f"Triton model repository: {exported.model_dir.parent}\nmodel card: {exported.card_path}")
