"""The report's figures: matplotlib (Agg, no pyplot state), returned as ``data:image/png;base64`` URIs so
that the page needs no network and no files beside it. Each function takes the report's own models."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure

from labelaudit.schemas.report import AnswerRow, ClassRow, Confusion, LabelerRow, NightRow, Rate

FLAG, OK, POOL = "#c0392b", "#2c6fbb", "#7f8c8d"
MAX_TRANSITIONS = 12  # small multiples shown on the page; report.json holds every labeler's matrix


def _uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _errors(rates: list[Rate]) -> tuple[np.ndarray, np.ndarray]:
    """Points and asymmetric error bars (2, N) in percent; NaN where a rate has no labels."""
    r = np.array([np.nan if x.rate is None else 100 * x.rate for x in rates])
    lo = np.array([np.nan if x.low is None else 100 * x.low for x in rates])
    hi = np.array([np.nan if x.high is None else 100 * x.high for x in rates])
    return r, np.nan_to_num(np.vstack([r - lo, hi - r]))


def _legend_below(ax) -> None:
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)


def _rate_dots(ax, names: list[str], rates: list[Rate], colors: list[str]) -> None:
    y = np.arange(len(names))[::-1]
    r, err = _errors(rates)
    for yi, ri, e, c, x in zip(y, r, err.T, colors, rates, strict=True):
        if x.n == 0:
            ax.text(0.5, yi, "no labels", va="center", fontsize=8, color=POOL)
            continue
        ax.errorbar(ri, yi, xerr=e[:, None], fmt="o", color=c, capsize=3, markersize=5)
        ax.text(min(100, (x.high or 0) * 100) + 1.5, yi, f"{x.k:,}/{x.n:,}", va="center", fontsize=7, color=POOL)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 112)
    ax.set_xlabel("disagreement rate (%), 95% Wilson interval")
    ax.grid(axis="x", alpha=0.3)


def class_rates(rows: list[ClassRow], pooled: Rate) -> str:
    fig = Figure(figsize=(6.4, 0.32 * len(rows) + 1.2))
    ax = fig.subplots()
    _rate_dots(ax, [r.name for r in rows], [r.disagreement for r in rows], [OK] * len(rows))
    if pooled.rate is not None:
        ax.axvline(100 * pooled.rate, color=POOL, ls="--", lw=1, label=f"all labels {100 * pooled.rate:.1f}%")
        _legend_below(ax)
    ax.set_title("Disagreement by human label", fontsize=10)
    return _uri(fig)


def answer_rates(rows: list[AnswerRow], pooled: Rate) -> str:
    """Per questioned labeler: how often a second look gave the model's label."""
    fig = Figure(figsize=(6.4, 0.32 * len(rows) + 1.2))
    ax = fig.subplots()
    _rate_dots(ax, [r.group or "(none)" for r in rows], [r.changed for r in rows], [OK] * len(rows))
    if pooled.rate is not None:
        ax.axvline(100 * pooled.rate, color=POOL, ls="--", lw=1, label=f"all answers {100 * pooled.rate:.1f}%")
        _legend_below(ax)
    ax.set_xlabel("answers giving the model's label (%), 95% Wilson interval")
    ax.set_title("Relabel requests answered: did the second look side with the model?", fontsize=10)
    return _uri(fig)


def confusion_heatmap(confusion: Confusion) -> str:
    counts = np.array(confusion.counts, dtype=float)  # (K, K): human label x model label
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(confusion.classes)
    fig = Figure(figsize=(0.55 * k + 2.4, 0.5 * k + 1.6))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j]):,}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share[i, j] > 0.6 else "black",
                )
    ax.set_xticks(range(k), confusion.classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), confusion.classes, fontsize=7)
    ax.set_xlabel("model's label")
    ax.set_ylabel("human label")
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of the row")
    ax.set_title("Human label vs model (counts; colour = share of the human label's row)", fontsize=9)
    return _uri(fig)


ESTIMATES = (  # the labeler's estimated error rate, by where it comes from: (source, colour, legend)
    ("agreement", "#e67e22", "agreement between labelers, bootstrap"),
    ("audit", "#16a085", "audit-sample answers, the model as predictor"),
    ("model", "#8e44ad", "disagreement with the model, less the model's measured mistakes, bootstrap"),
)


def labeler_rates(rows: list[LabelerRow], pooled: Rate) -> str:
    fig = Figure(figsize=(6.4, 0.42 * len(rows) + 1.4))
    ax = fig.subplots()
    names = [r.labeler_id or "(no labeler id)" for r in rows]
    _rate_dots(ax, names, [r.disagreement for r in rows], [FLAG if r.flagged else OK for r in rows])
    y = np.arange(len(rows))[::-1] - 0.25
    for source, colour, how in ESTIMATES:
        # (y, rate, low, high) of each labeler whose estimate comes from ``source`` (one without a rate: no dot)
        mine = [
            (yi, est.rate, est.low, est.high)
            for yi, est in zip(y, (r.estimated_error for r in rows), strict=True)
            if est.source == source and est.rate is not None and est.low is not None and est.high is not None
        ]
        if mine:
            e = np.array([[100 * rate, 100 * (rate - low), 100 * (high - rate)] for _, rate, low, high in mine])
            ax.errorbar(
                e[:, 0],
                [yi for yi, *_ in mine],
                xerr=e[:, 1:].T,
                fmt="D",
                color=colour,
                capsize=2,
                markersize=4,
                label=f"estimated error rate ({how})",
            )
    if pooled.rate is not None:
        ax.axvline(
            100 * pooled.rate, color=POOL, ls="--", lw=1, label=f"disagreement, all labels {100 * pooled.rate:.1f}%"
        )
    _legend_below(ax)
    ax.set_xlabel("rate (%) with its 95% interval")
    ax.set_title("Per labeler (red: flagged)", fontsize=10)
    return _uri(fig)


def transitions(rows: list[LabelerRow]) -> str:
    shown = rows[:MAX_TRANSITIONS]
    k = len(shown[0].transition.classes)
    cols = min(3, len(shown))
    nrows = -(-len(shown) // cols)
    fig = Figure(figsize=(3.3 * cols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax, row in zip(axes, shown, strict=False):
        t = np.array([r if r is not None else [np.nan] * k for r in row.transition.rows])  # (K, K)
        ax.imshow(np.ma.masked_invalid(t), cmap="Purples", vmin=0, vmax=1)
        ax.set_title(
            f"{row.labeler_id or '(no labeler id)'} ({row.labels:,} labels)",
            fontsize=8,
            color=FLAG if row.flagged else "black",
        )
        ax.set_xticks(range(k), [c[:8] for c in row.transition.classes], rotation=90, fontsize=5)
        ax.set_yticks(range(k), [c[:8] for c in row.transition.classes], fontsize=5)
        ax.set_xlabel("labeler's label", fontsize=6)
        ax.set_ylabel("truth estimate", fontsize=6)
    for ax in axes[len(shown) :]:
        ax.axis("off")
    fig.suptitle("T[i, j] ≈ P(labeler says j | truth i), rows normalised; blank rows: no labels", fontsize=9)
    return _uri(fig)


def trend_lines(rows: list[NightRow]) -> str:
    fig = Figure(figsize=(7.2, 4.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    models = sorted({(r.model_name, r.model_version) for r in rows})
    nights = sorted({r.night for r in rows})
    x_of = {n: i for i, n in enumerate(nights)}
    for name, version in models:
        mine = [r for r in rows if (r.model_name, r.model_version) == (name, version) and r.model_disagreement.n]
        if not mine:
            continue
        x = [x_of[r.night] for r in mine]
        r, err = _errors([m.model_disagreement for m in mine])
        top.errorbar(x, r, yerr=err, fmt="o-", capsize=3, markersize=4, label=f"{name} v{version}")
        bottom.bar(x, [m.records for m in mine], alpha=0.6)
    top.set_ylabel("labels unlike the model (%)")
    top.grid(alpha=0.3)
    top.legend(fontsize=7)
    bottom.set_ylabel("records")
    bottom.set_xticks(range(len(nights)), [n.isoformat()[5:] for n in nights], rotation=45, fontsize=7)
    top.set_title("Nights: labels unlike the model's label (95% Wilson interval), and volume", fontsize=10)
    return _uri(fig)
