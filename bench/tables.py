"""Render docs/benchmarks.md from bench/results/*.json, so every number in the docs traces to a file."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.common import RESULTS, SERVE_SYSTEMS, commits, devices

DOCS = Path(__file__).parent.parent / "docs" / "benchmarks.md"
METHOD_ORDER = ["classifier_a", "ce", "glc", "fasten", "crowd", "oracle"]


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def captioned(caption: str, result: dict, lines: list[str]) -> str:
    """A table under its caption, which ends with the device, the commits and the date the rows came from."""
    return f"{caption} Device: {devices(result)}. {commits(result)}, {result['date']}.\n\n" + "\n".join(lines) + "\n"


def train_noise_table(result: dict) -> str:
    cells: dict[tuple[str, float], list[float]] = defaultdict(list)
    speed: dict[str, list[float]] = defaultdict(list)
    load: dict[str, list[float]] = defaultdict(list)  # the machine's load during each row (at its end: older rows)
    for row in result["rows"]:
        cells[(row["method"], row["noise_requested"])].append(row["clean_test_acc"])
        if row.get("train_images_per_s"):
            speed[row["method"]].append(row["train_images_per_s"])
        busy = row.get("loadavg_1m_mean", row.get("loadavg_1m"))
        if busy is not None:
            load[row["method"]].append(busy)
    noises = sorted({n for _, n in cells})
    seen = {m for m, _ in cells}
    methods = [m for m in METHOD_ORDER if m in seen] + sorted(seen - set(METHOD_ORDER))  # then variants
    head = "| method | " + " | ".join(f"noise {n:.0%}" for n in noises) + " | train images/s | load (1 min) |"
    lines = [head, "|" + " --- |" * (len(noises) + 3)]
    for m in methods:
        accs = []
        for n in noises:
            v = cells.get((m, n), [])
            accs.append(f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f} (n={len(v)})" if v else "-")
        ips = f"{np.mean(speed[m]):.0f}" if speed.get(m) else "-"
        busy = f"{np.mean(load[m]):.1f}" if load.get(m) else "-"
        lines.append(f"| {m} | " + " | ".join(accs) + f" | {ips} | {busy} |")
    c = result["config"]
    return (
        f"Clean-test accuracy (%) on task B, mean ± std over seeds, 1% trusted set. Size `{c.get('size')}` "
        f"({c.get('per_task')} images per task), epochs A/B {c.get('epochs_a')}/{c.get('epochs_b')}, "
        f"arch `{c.get('arch')}`. Device: {devices(result)}. {commits(result)}, {result['date']}. "
        "Load: the 1-minute load average, sampled through each row and averaged (rows before this was "
        "recorded: at the row's end; '-': not recorded).\n\n"
        + "\n".join(lines)
        + "\n"
        + (f"\nNote: {c['note']}\n" if c.get("note") else "")
        + aims_at_40(result)
        + fasten_diagnostics(result)
    )


def fasten_diagnostics(result: dict) -> str:
    """FasTEN rows that carry label diagnostics: is T̂ as noisy as the corrected labels it models?"""
    cells: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for row in result["rows"]:
        if row.get("true_t_diag_mean") is not None:
            cells[(row["method"], row["noise_requested"])].append(row)
    if not cells:
        return ""
    keys = (
        "label_acc",
        "corrected_label_acc",
        "corrections_right",
        "true_t_diag_mean",
        "t_hat_diag_mean",
        "heldout_t_hat_diag_mean",
    )
    lines = [
        "| method | noise | given labels right | corrected labels right | corrections right | "
        "diag of true P(ŷ given truth) | diag of T̂ (trusted rows, training) | diag of T̂ (val images) | runs |",
        "|" + " --- |" * 9,
    ]
    for (method, noise), rows in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        mean = {k: np.mean([r[k] for r in rows if r.get(k) is not None] or [np.nan]) for k in keys}
        lines.append(
            f"| {method} | {noise:.0%} | "
            + " | ".join("-" if np.isnan(mean[k]) else f"{mean[k]:.3f}" for k in keys)
            + f" | {len(rows)} |"
        )
    return (
        "\nFasTEN's labels on the untrusted training rows, from the final model: the share right before and after "
        "correction (ρ), and the mean diagonal of the true transition from truth to corrected label next to the "
        "final `T̂`'s (a larger `T̂` diagonal: `T̂` sees less noise than there is), as estimated in training from "
        "the trusted rows and as the final noisy head reads it off the clean val images, which no loss fitted "
        "(where the two differ, the trusted rows' memorised features bias the estimate):\n\n" + "\n".join(lines) + "\n"
    )


def aims_at_40(result: dict) -> str:
    """The issue's aims at 40% noise, as measured: gaps in accuracy points, each over the seeds both rows ran
    (a method run on fewer seeds than its baseline is held against the baseline on those seeds only)."""
    acc: dict[str, dict[int, float]] = defaultdict(dict)
    for row in result["rows"]:
        if row["noise_requested"] == 0.4:
            acc[row["method"]][row["seed"]] = 100 * row["clean_test_acc"]
    if not {"ce", "oracle"} <= set(acc):
        return ""

    def gap(high: str, low: str) -> float | None:
        seeds = acc[high].keys() & acc[low].keys() if high in acc and low in acc else set()
        return float(np.mean([acc[high][s] - acc[low][s] for s in seeds])) if seeds else None

    lines = [
        "| method | seeds | minus glc | minus ce (aim >= +5) | oracle minus method (aim <= 2, at least <= 3) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method in sorted(acc, key=lambda k: (k.split(":")[0] != "fasten", k)):  # fasten and its variants first
        if method.split(":")[0] in ("fasten", "crowd", "crowdmix", "mentormix"):
            glc, ce, oracle = (_same_schedule(base, method) for base in ("glc", "ce", "oracle"))
            vs_glc, vs_ce, to_oracle = gap(method, glc), gap(method, ce), gap(oracle, method)
            cells = [f"{x:+.2f}" if x is not None else "-" for x in (vs_glc, vs_ce)]
            cells.append(f"{to_oracle:.2f}" if to_oracle is not None else "-")
            lines.append(f"| {method} | {len(acc[method])} | " + " | ".join(cells) + " |")
    return (
        "\nAims at 40% noise (points, mean over the seeds both rows ran; a variant with more epochs is held "
        "against `ce` and the oracle with the same epochs, '-' where those were not run):\n\n" + "\n".join(lines) + "\n"
    )


def _same_schedule(baseline: str, method: str) -> str:
    """The baseline row to hold ``method`` against: ``ce:epochs=30`` for ``fasten:epochs=30`` (a longer
    schedule helps every method, so a variant is only compared on its own schedule)."""
    epochs = [kv for kv in method.partition(":")[2].split(",") if kv.startswith("epochs=")]
    return f"{baseline}:{epochs[0]}" if epochs else baseline


def student_pairs_table(result: dict) -> str:
    """bench/student_pairs.py: per data seed, the shared teacher and each student variant's mean over its
    student seeds, with the mean paired difference from ``base`` (same teacher, same student seed) and its
    standard error."""
    rows = result["rows"]
    lines = [
        "| seed | variant | student seeds | clean test acc (mean ± sd) | vs base, paired (mean ± se) | load avg |",
        "|" + " --- |" * 6,
    ]
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        teacher = next((r for r in mine if r["variant"] == "teacher"), None)
        if teacher:
            lines.append(
                f"| {seed} | teacher (`{teacher['first']}`) | - | {100 * teacher['clean_test_acc']:.2f} | - | - |"
            )
        base = {r["student_seed"]: r["clean_test_acc"] for r in mine if r["variant"] == "base"}
        for variant in dict.fromkeys(r["variant"] for r in mine if r["variant"] != "teacher"):
            accs = {r["student_seed"]: r["clean_test_acc"] for r in mine if r["variant"] == variant}
            values = 100 * np.array(list(accs.values()))
            sd = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
            diffs = 100 * np.array([accs[s] - base[s] for s in accs if s in base])
            paired = "-"
            if variant != "base" and len(diffs):
                se = f" ± {diffs.std(ddof=1) / np.sqrt(len(diffs)):.2f}" if len(diffs) > 1 else ""
                paired = f"{diffs.mean():+.2f}{se} (n={len(diffs)})"
            loads = [r["loadavg_1m_mean"] for r in mine if r["variant"] == variant and "loadavg_1m_mean" in r]
            load = f"{np.mean(loads):.1f}" if loads else "-"
            lines.append(f"| {seed} | `{variant}` | {len(values)} | {values.mean():.2f}{sd} | {paired} | {load} |")
    return (
        "Each seed's first round is trained once and saved; every student round starts from it (`--teacher`), "
        "so a paired difference carries the student's run-to-run variation only.\n\n"
        + "\n".join(lines)
        + "\n"
        + student_targets_table(rows)
    )


def student_targets_table(rows: list[dict]) -> str:
    """The teacher rows' ``targets`` (``bench.student_pairs.target_diagnostics``): per seed and labeler, how
    often the label, the teacher's argmax and the student's target are right, and the EM's belief of the
    labeler's accuracy. Empty when no teacher row has them."""
    teachers = [r for r in rows if r["variant"] == "teacher" and r.get("targets")]
    if not teachers:
        return ""
    lines = [
        "| seed | rows of | rows | label right | teacher right | target right | EM's belief: label right |",
        "|" + " --- |" * 7,
    ]
    for r in sorted(teachers, key=lambda r: r["seed"]):
        for group, d in r["targets"].items():
            cells = [f"{100 * d[k]:.1f}" if k in d else "-" for k in ("label", "teacher", "target", "em_label")]
            lines.append(f"| {r['seed']} | {group} | {d['rows']} | " + " | ".join(cells) + " |")
    return (
        "\nThe student's targets, against the recipe's true classes (`target_diagnostics`): for each labeler's rows, "
        "how often its label, the teacher's argmax, and the target (the class posterior through the labeler's EM "
        "matrix, before the student's thresholds) are right, and how often the EM believes the label is right (the "
        "mean posterior of the given label); the images without a label take the teacher's guess as their target.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def train_multi_table(result: dict) -> str:
    """bench/train_noise.py --multi: each method on task B where a share of the images carry two more labels,
    beside the same method, seed and schedule on one label per image (train_protocol.json, where it has the
    row and the same classifier A), and the model card's per-labeler error rates against the truth."""
    lead = (
        "Task B as in issue 17's protocol (60 epochs, 5,000 unlabeled images), with a share of the labeled images "
        'given two more labels by two other labelers (`labelaudit data --multi`; docs/methods.md, "Several labels '
        "per image\"). 'One label per image': the same method and seed in train_protocol.json (shown only where "
        "that row started from the same classifier A); for a `separate_labels=1` row (each label of an image given an "
        "item id of its own: the same labels, not read together), the same method on the same data read together."
    )
    return _beside_protocol_table(result, "multi", "labeled images with 3 labels", "one label per image", lead)


def train_qa_table(result: dict) -> str:
    """bench/train_noise.py --qa: each method on task B where a QA pass checked a random share of the labeled
    images (a trusted row with the true label beside the labeler's), beside the same method, seed and schedule
    without the checks (train_protocol.json), and the model card's per-labeler error rates against the truth."""
    lead = (
        "Task B as in issue 17's protocol (60 epochs, 5,000 unlabeled images, 1% trusted), with a QA pass that "
        "checked a random share of the labeled images: each checked image gets a trusted row with its true label "
        "beside the labeler's row (`labelaudit data --qa`; what a QA budget spent on random checks buys). "
        "'Without the checks': the same method and seed in train_protocol.json (shown only where that row started "
        "from the same classifier A). The card's labeler rates read the checks (source `audit`, docs/methods.md)."
    )
    return _beside_protocol_table(result, "qa", "labeled images checked", "without the checks", lead)


def harvest_table(result: dict) -> str:
    """bench/harvest.py: task B trained on the manifest the stream started from and on the one `labelaudit harvest`
    wrote after a night's answers, per seed, with what each manifest holds; the mean difference from ``before``."""
    names = {
        "before": "before (the demo's task_b.jsonl)",
        "after": "after harvest (audit-sample answers checked)",
        "after_as_labels": "after harvest --checked-as label",
    }
    lines = [
        "| seed | manifest | clean test acc | difference | trusted rows (right) | labels (right) | reviewer's labels "
        "| load avg |",
        "|" + " --- |" * 8,
    ]
    before = {r["seed"]: r["clean_test_acc"] for r in result["rows"] if r["variant"] == "before"}
    differences: dict[str, list[float]] = defaultdict(list)
    for r in sorted(result["rows"], key=lambda r: (r["seed"], list(names).index(r["variant"]))):
        diff = "-"
        if r["variant"] != "before" and r["seed"] in before:
            differences[r["variant"]].append(100 * (r["clean_test_acc"] - before[r["seed"]]))
            diff = f"{differences[r['variant']][-1]:+.2f}"
        lines.append(
            f"| {r['seed']} | {names[r['variant']]} | {100 * r['clean_test_acc']:.2f} | {diff} "
            f"| {r['trusted_rows']:,} ({r['trusted_right']:.1%}) | {r['labels']:,} ({r['labels_right']:.1%}) "
            f"| {r['reviewer_labels']:,} | {r.get('loadavg_1m_mean', 0):.1f} |"
        )
    for variant, found in differences.items():
        if len(found) > 1:
            lines.append(f"| mean of {len(found)} | {names[variant]} | | {np.mean(found):+.2f} | | | | |")
    c = result["config"]
    return captioned(
        f"`labelaudit demo --size {c['size']}` streams task B's labels (40% noise, 1% trusted) through a real broker "
        f"and consumer with a {c['audit_sample_rate']:.0%} audit sample; a simulated reviewer (5% errors) answers "
        f"the sample and the {c['qa_budget']} highest-scoring disagreement requests; `labelaudit harvest` writes the "
        f"next manifest. Each manifest then trains `auto` for {c['epochs_b']} epochs from the demo's classifier A "
        "(same seed). Right: the share of rows whose label is the image's true class.",
        result,
        lines,
    )


def _beside_protocol_table(result: dict, knob: str, column: str, base_column: str, lead: str) -> str:
    """Rows trained on the protocol's data with one more data knob (``multi``, ``qa``), each beside the same
    method and seed in train_protocol.json when that row started from the same classifier A."""
    protocol = (_load("train_protocol") or {"rows": []})["rows"]
    single = {(r["method"], r["seed"]): r for r in protocol if not r.get(knob)}
    # a protocol row from before rows named their classifier A: the classifier_a row of its seed and machine
    a_of = {(r["seed"], r.get("device")): r["clean_test_acc"] for r in protocol if r["method"] == "classifier_a"}
    lines = [
        f"| seed | method | {column} | clean test acc | {base_column} | difference "
        "| card's labeler rates: MAE, Spearman | load avg |",
        "|" + " --- |" * 8,
    ]
    paired: dict[tuple[str, float], list[tuple[float, float]]] = defaultdict(list)
    together = {(r["method"], r["seed"]): r for r in result["rows"]}
    for r in sorted(result["rows"], key=lambda r: (r["seed"], r.get(knob, 0), r["method"] != "classifier_a")):
        base = single.get((r["method"], r["seed"]))
        if r["method"].endswith(",separate_labels=1"):  # the same labels, not read together: held against together
            base = together.get((r["method"].removesuffix(",separate_labels=1"), r["seed"]))
        base_start = base and base.get("classifier_a_test_acc", a_of.get((base["seed"], base.get("device"))))
        same_start = base and base_start == r.get("classifier_a_test_acc", r["clean_test_acc"])
        one = f"{100 * base['clean_test_acc']:.2f}" if same_start else "-"
        diff = f"{100 * (r['clean_test_acc'] - base['clean_test_acc']):+.2f}" if same_start else "-"
        rates = f"{r['labeler_rates_mae']:.3f}, {r['labeler_rates_spearman']:.2f}" if "labeler_rates_mae" in r else "-"
        load = f"{r['loadavg_1m_mean']:.1f}" if "loadavg_1m_mean" in r else "-"
        lines.append(
            f"| {r['seed']} | `{r['method']}` | {r.get(knob, 0):.0%} | {100 * r['clean_test_acc']:.2f} | {one} "
            f"| {diff} | {rates} | {load} |"
        )
        if same_start and r["method"] != "classifier_a":
            paired[(r["method"], r.get(knob, 0))].append((r["clean_test_acc"], base["clean_test_acc"]))
    for (method, share), pairs in paired.items():
        if len(pairs) > 1:
            with_, without = 100 * np.array(pairs).T
            lines.append(
                f"| mean of {len(pairs)} | `{method}` | {share:.0%} | {with_.mean():.2f} | {without.mean():.2f} "
                f"| {(with_ - without).mean():+.2f} | | |"
            )
    return f"{lead} Device: {devices(result)}. {commits(result)}, {result['date']}.\n\n" + "\n".join(lines) + "\n"


def _without(method: str, key: str) -> str:
    """``method`` without the bench variant ``key=1``: ``ce:class_conditional=1`` -> ``ce``."""
    name, _, rest = method.partition(":")
    kept = [kv for kv in rest.split(",") if kv and kv != f"{key}=1"]
    return f"{name}:{','.join(kept)}" if kept else name


def train_conditional_table(result: dict) -> str:
    """bench/train_noise.py class_conditional=1: each method on labels whose errors are untied from the images
    (each labeler's labels shuffled within its true classes, its matrix kept), beside the same method, seed and
    classifier A on the recipe's labels (train_protocol.json) and that seed's oracle."""
    protocol = {(r["method"], r["seed"]): r for r in (_load("train_protocol") or {"rows": []})["rows"]}
    mine = {(r["method"], r["seed"]): r for r in result["rows"]}
    start_of = {seed: r["clean_test_acc"] for (method, seed), r in protocol.items() if method == "classifier_a"}

    def acc(row: dict | None) -> float | None:
        return None if row is None else 100 * row["clean_test_acc"]

    def same_start(row: dict, other: dict | None) -> dict | None:
        """``other`` (a protocol row) where it started from ``row``'s classifier A, else None. Protocol rows from
        before rows named their start started from that file's classifier A row of their seed."""
        start = None if other is None else other.get("classifier_a_test_acc", start_of.get(other["seed"]))
        return other if start is not None and start == row.get("classifier_a_test_acc") else None

    def cell(value: float | None, sign: bool = False) -> str:
        return "-" if value is None else (f"{value:+.2f}" if sign else f"{value:.2f}")

    lines = [
        "| seed | method | labels untied from images | recipe's labels | difference | minus `ce` (same labels) "
        "| oracle | oracle minus method | load avg |",
        "|" + " --- |" * 9,
    ]
    means: dict[str, list[list[float | None]]] = defaultdict(list)
    for (method, seed), r in sorted(mine.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if method == "classifier_a":
            continue
        recipe = same_start(r, protocol.get((_without(method, "class_conditional"), seed)))
        ce = mine.get(("ce:class_conditional=1", seed)) if not method.startswith("ce") else None
        oracle = same_start(r, protocol.get(("oracle", seed)))
        values = [
            acc(r),
            acc(recipe),
            None if recipe is None else acc(r) - acc(recipe),
            None if ce is None else acc(r) - acc(ce),
            acc(oracle),
            None if oracle is None else acc(oracle) - acc(r),
        ]
        means[method].append(values)
        load = f"{r['loadavg_1m_mean']:.1f}" if "loadavg_1m_mean" in r else "-"
        signs = (False, False, True, True, False, False)
        lines.append(
            f"| {seed} | `{method}` | "
            + " | ".join(cell(v, s) for v, s in zip(values, signs, strict=True))
            + f" | {load} |"
        )
    for method, runs in means.items():
        if len(runs) > 1:
            columns = [[v for v in column if v is not None] for column in zip(*runs, strict=True)]
            values = [float(np.mean(c)) if len(c) == len(runs) else None for c in columns]
            signs = (False, False, True, True, False, False)
            lines.append(
                f"| mean of {len(runs)} | `{method}` | "
                + " | ".join(cell(v, s) for v, s in zip(values, signs, strict=True))
                + " | |"
            )
    return (
        "Issue 17's protocol (60 epochs, 5,000 unlabeled images, 1% trusted, 40% noise) on labels whose errors are "
        "untied from the images: each labeler's labels shuffled among its rows of the same true class "
        "(`class_conditional=1`), so every labeler's transition matrix is the recipe's exactly but the instance "
        "labeler no longer errs on the hard images toward the class a network also confuses them with. 'Recipe's "
        "labels' and 'oracle': the same method and seed in train_protocol.json, shown only where that row started "
        f"from the same classifier A. Device: {devices(result)}. {commits(result)}, {result['date']}.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def train_bounds_table(result: dict) -> str:
    """bench/train_noise.py drop_wrong=1 with oracle: the right labels alone, beside the full oracle and auto's
    model on the recipe's and on untied labels (train_protocol.json, train_conditional.json), each shown only
    where it started from the same classifier A."""
    others = [(_load(name) or {"rows": []})["rows"] for name in ("train_protocol", "train_conditional")]
    row_of = {(r["method"], r["seed"]): r for rows in others for r in rows}
    # rows from before rows named their start started from their file's classifier A row of that seed
    start_of = {r["seed"]: r["clean_test_acc"] for rows in others for r in rows if r["method"] == "classifier_a"}
    auto = "crowdmix:mixup_alpha=0.3,student_rounds=1"
    columns = {
        "the full oracle (every true label)": "oracle",
        "auto, recipe's labels": auto,
        "auto, labels untied from images": f"{auto},class_conditional=1",
    }
    lines = [
        "| seed | right labels alone | " + " | ".join(columns) + " | load avg |",
        "|" + " --- |" * (len(columns) + 3),
    ]
    for r in sorted(result["rows"], key=lambda r: (r["seed"], r["method"])):
        if r["method"] == "classifier_a":
            continue
        cells = []
        for method in columns.values():
            other = row_of.get((method, r["seed"]))
            start = None if other is None else other.get("classifier_a_test_acc", start_of.get(r["seed"]))
            same = start is not None and start == r.get("classifier_a_test_acc")
            cells.append(f"{100 * other['clean_test_acc']:.2f}" if same else "-")
        load = f"{r['loadavg_1m_mean']:.1f}" if "loadavg_1m_mean" in r else "-"
        lines.append(f"| {r['seed']} | {100 * r['clean_test_acc']:.2f} | " + " | ".join(cells) + f" | {load} |")
    return captioned(
        "Issue 17's protocol (60 epochs, 5,000 unlabeled images, 1% trusted, 40% noise) with every wrong label "
        "removed and its image kept without a label (`oracle:drop_wrong=1`: plain cross-entropy on the right labels "
        "and the trusted set): what a method that found and dropped exactly the wrong labels could learn from "
        "the labels, beside the oracle (every image's true class) and `auto`'s model from the same classifier A.",
        result,
        lines,
    )


def card_rates_table(result: dict) -> str:
    """bench/card_rates.py: each estimator's per-labeler error rates against the truth, per seed and their mean."""
    names = {
        "model": "the model's deconvolved disagreement alone",
        "one_coin": "one-coin fit to pair agreement (the card's source before)",
        "dawid_skene": "Dawid-Skene over the images' labels",
        "card": "the card now (Dawid-Skene where identified, else the model's)",
    }
    lines = ["| seed | estimator | mean abs error | Spearman vs true error |", "| --- | --- | --- | --- |"]
    by: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(result["rows"], key=lambda r: (r["seed"], list(names).index(r["estimator"]))):
        by[r["estimator"]].append(r)
        lines.append(
            f"| {r['seed']} | {names[r['estimator']]} | {r['mean_abs_error']:.3f} | {r['spearman_vs_true_error']:.2f} |"
        )
    for estimator, rows in by.items():
        if len(rows) > 1:
            mae = np.mean([r["mean_abs_error"] for r in rows])
            rho = np.mean([r["spearman_vs_true_error"] for r in rows])
            lines.append(f"| mean of {len(rows)} | {names[estimator]} | {mae:.3f} | {rho:.2f} |")
    c = result["config"]
    return captioned(
        f"The model card's per-labeler error rates on task B with {c['multi']:.0%} of the labeled images given two "
        f"more labels (the `{c['method']}` runs of the table above: the same networks and labels for every "
        "estimator), against the recipe's true rates (labelers.json).",
        result,
        lines,
    )


def report_rates_table(result: dict) -> str:
    """bench/report_rates.py: the report's shared-item estimators against the realised rates, mean over seeds."""
    names = {
        "one_coin": "one-coin fit to pair agreement (before)",
        "dawid_skene": "Dawid-Skene over label patterns (now)",
    }
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in result["rows"]:
        cells[(r["multi"], r["scope"], r["estimator"])].append(r)
    lines = [
        "| items with 3 labels | window | estimator | mean abs error | Spearman (min) | flag exact | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (multi, scope, estimator), rows in sorted(
        cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != "last_night", list(names).index(kv[0][2]))
    ):
        rho = [r["spearman_vs_true_error"] for r in rows]
        lines.append(
            f"| {multi:.0%} | {scope.replace('_', ' ')} | {names[estimator]} | "
            f"{np.mean([r['mean_abs_error'] for r in rows]):.3f} | {np.mean(rho):.2f} ({min(rho):.1f}) | "
            f"{sum(r.get('flagged_equals_truly_noisy', False) for r in rows)} of {len(rows)} | {len(rows)} |"
        )
    c = result["config"]
    return captioned(
        f"The nightly report's per-labeler error rates from the items several labelers labeled: bench/report.py's "
        f"simulated stream ({c['noise']:.0%} noise, the recipe's five labelers, {c['nights']} nights), every label in "
        "a SQLite store, both estimators on the same store, against each labeler's realised error rate in the "
        "window. Flag exact: the report flagged exactly the labelers the simulation made noisy (all but the reliable "
        "one).",
        result,
        lines,
    )


def report_audit_table(result: dict) -> str:
    """bench/report_audit.py: one label per item, the report's rates before and after a reviewer answers the audit
    sample, mean over seeds."""
    names = {
        "model": "the model's deconvolved disagreement (no answers)",
        "audit": "the report now: audit answers, the model as predictor",
        "answers_alone": "the answers' share of changed labels alone",
    }
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in result["rows"]:
        cells[(r["scope"], r["audit_rate"], r["reviewer_error"], r["estimator"])].append(r)
    lines = [
        "| window | audit sample | reviewer errs | estimator | answers per run | mean abs error | Spearman (min) "
        "| Spearman >= 0.9 | true rate in the 95% interval | flagged = truly noisy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (scope, share, wrong, estimator), rows in sorted(
        cells.items(), key=lambda kv: (kv[0][0] != "last_night", kv[0][1], kv[0][2] or 0, list(names).index(kv[0][3]))
    ):
        rho = [r["spearman_vs_true_error"] for r in rows]
        with_interval = [r for r in rows if r.get("intervals_hold") is not None]
        held = f"{sum(r['intervals_hold'] for r in with_interval)} of {sum(r['labelers'] for r in with_interval)}"
        answers = [r["answers"] for r in rows if r.get("answers") is not None]
        flags = [r["flagged_equals_truly_noisy"] for r in rows if "flagged_equals_truly_noisy" in r]
        lines.append(
            f"| {scope.replace('_', ' ')} | {share:.0%} | {'–' if wrong is None else f'{wrong:.0%}'} | "
            f"{names[estimator]} | {f'{np.mean(answers):,.0f}' if answers else '–'} | "
            f"{np.mean([r['mean_abs_error'] for r in rows]):.3f} | {np.mean(rho):.2f} ({min(rho):.1f}) | "
            f"{sum(x >= 0.9 - 1e-9 for x in rho)} of {len(rho)} | {held if with_interval else '–'} | "
            f"{f'{sum(flags)} of {len(flags)}' if flags else '–'} |"
        )
    c = result["config"]
    return captioned(
        f"The nightly report's per-labeler error rates with one label per item (bench/report.py's stream: "
        f"{c['noise']:.0%} noise, the recipe's five labelers, {c['stream_images']:,} items over {c['nights']} nights, "
        "task B trained with --method auto), before and after a reviewer answers every request of the random audit "
        "sample (the stream's own draw by item id) with the true class, or at the reviewer's error rate another "
        "class. Answers per run: the labelers' labels in the window with an answer. A labeler needs 20 answers for "
        "an audit estimate; with fewer it keeps the model's. Flagged = truly noisy: the report's flag (its test per "
        "labeler: the audit z-test where the labeler and another in the pool have audit estimates, else Fisher's on "
        "disagreement; the reviewer's labels are in the pool) picked exactly the labelers the simulation made noisy "
        "(every kind but reliable).",
        result,
        lines,
    )


def card_audit_table(result: dict) -> str:
    """bench/card_audit.py: the card's single-label rates, the model's alone and with a QA pass's checks."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in result["rows"]:
        cells[(r["share"], r["estimator"])].append(r)
    lines = [
        "| QA pass checks | estimator | runs | mean abs error | Spearman (min) | Spearman >= 0.9 "
        "| true rate in the 95% interval |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {
        "model": "the model's deconvolved disagreement",
        "card": "the card now: the checks, the model as predictor",
    }
    for (share, estimator), rows in sorted(cells.items()):
        rho = [r["spearman_vs_true_error"] for r in rows]
        lines.append(
            f"| {share:.0%} | {names[estimator]} | {len(rows)} | {np.mean([r['mean_abs_error'] for r in rows]):.3f} | "
            f"{np.mean(rho):.2f} ({min(rho):.1f}) | {sum(x >= 0.9 - 1e-9 for x in rho)} of {len(rho)} | "
            f"{sum(r['intervals_hold'] for r in rows)} of {sum(r['labelers'] for r in rows)} |"
        )
    c = result["config"]
    return captioned(
        "The model card's per-labeler error rates with one label per image (bench/report.py's auto models, "
        f"60 epochs, the recipe's five labelers at 40% noise), and with a simulated QA pass that checks a random "
        f"share of the labeled images ({c['draws']} passes per share and seed, seeds {c['seeds']}): each labeler "
        "with 20 checked labels or more is read from its checks. Runs: one per seed without checks, one per pass "
        "with them.",
        result,
        lines,
    )


def label_errors_table(result: dict) -> str:
    cells: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for row in result["rows"]:
        cells[(row["detector"], row["noise_requested"])].append(row)
    lines = ["| detector | noise | precision | recall | F1 | seeds |", "| --- | --- | --- | --- | --- | --- |"]
    for (detector, noise), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        stat = {k: np.mean([r[k] for r in rs]) for k in ("precision", "recall", "f1")}
        lines.append(
            f"| {detector} | {noise:.0%} | {stat['precision']:.3f} | {stat['recall']:.3f} | {stat['f1']:.3f} | {len(rs)} |"
        )
    method = result["config"].get("method", "fasten")
    return (
        f"Finding task B's wrong training labels from 2-fold out-of-sample `{method}` probabilities (the same "
        f"probabilities for every detector; `labelaudit` is confident-joint-v1, `labelaudit-posterior` is "
        f"labeler-posterior-v1). Device: {devices(result)}. {commits(result)}, {result['date']}.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def stream_table(result: dict) -> str:
    lines = [
        "| mode | store | consumers | messages | images/s | vs model only (aim e2e >= 0.7) | wall s | lost | duplicated | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r.get('store') or '-'} | {r.get('consumers', '-')} | {r['messages']:,} | "
            f"{r['images_per_s']:.0f} | {r.get('vs_model_only', float('nan')):.2f} | {r['seconds']:.1f} | "
            f"{r['lost']} | {r['duplicated']} | {r.get('load_avg_1m', float('nan')):.1f} |"
        )
    drains = [r for r in result["rows"] if r["mode"].startswith("drain") and r.get("lag_samples")]
    lag = ""
    if drains:
        samples = drains[0]["lag_samples"]
        lag = "\nThe consumer's `labelaudit_consumer_lag` while draining the backlog (seconds: messages behind): " + (
            ", ".join(f"{t:.0f}s: {v:,.0f}" for t, v in samples[:: max(1, len(samples) // 12)]) + ".\n"
        )
    return (
        f"Topic to store through `labelaudit consume` processes on a real broker, next to the same backend "
        f"without Kafka and store (`model_only`: decode + onnxruntime in batches of {result['config']['batch']}, pipelined as "
        f"the consumer runs them). "
        f"Device: {devices(result)}. Commit {result['git_commit']}, {result['date']}.\n\n"
        + "\n".join(lines)
        + "\n"
        + lag
    )


SERVE_ORDER = SERVE_SYSTEMS
BODY_ORDER = ["multipart", "json", "audit_multipart", "audit_json"]  # within a system; other bodies after these


def _serve_rows(result: dict, per_request: int) -> list[dict]:
    rows = [r for r in merged_passes(result["rows"]) if r["images_per_request"] == per_request]

    def order(r: dict) -> tuple:
        body = BODY_ORDER.index(r["body"]) if r["body"] in BODY_ORDER else len(BODY_ORDER)
        return SERVE_ORDER.index(r["system"]), body, r["concurrency"]

    return sorted(rows, key=order)


def _serve_client(result: dict) -> str:
    """The load generator, as the serving tables' prose names it."""
    c = result["config"]
    if c.get("client") == "wrk":
        return f"{c.get('client_version') or 'wrk'} client (compiled, one thread, bench/loadgen.lua)"
    return f"{c['client']} client"


def _serve_audit_note(result: dict) -> str:
    if not any(r["body"].startswith("audit_") for r in result["rows"]):
        return ""
    return (
        " `audit_json` / `audit_multipart`: `POST /v1/audit` with one image, a labeler and a label (half of them "
        "the model's class, half another), every request with an item id of its own, so each one classifies, "
        "judges and writes its verdict to the gateway's SQLite store (a fresh file each run)."
    )


MERGED_MEANS = ("requests_per_s", "images_per_s", "p50_ms", "p99_ms", "mean_ms", "server_cpu_ms_per_request")


def merged_passes(rows: list[dict]) -> list[dict]:
    """A serving point measured in several passes (bench/serve.py ``passes``) as one row: the mean of its
    throughput, latencies and CPU, the errors summed, each pass's images/s kept in ``passes_images_per_s``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["system"], r["body"], r["concurrency"], r["images_per_request"])].append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        row = dict(group[0])
        for key in MERGED_MEANS:
            values = [r[key] for r in group if r.get(key) is not None]
            row[key] = round(float(np.mean(values)), 3) if values else None
        row["errors"] = sum(r["errors"] for r in group)
        row["passes_images_per_s"] = [round(r["images_per_s"]) for r in group]
        out.append(row)
    return out


def _server_label(row: dict) -> str:
    """`` (uvicorn)``, `` (granian, rsgi)``: a gateway row's server and, for granian, its interface."""
    if not row.get("http_server"):
        return ""
    interface = f", {row['http_interface']}" if row["http_server"] == "granian" and row.get("http_interface") else ""
    return f" ({row['http_server']}{interface})"


def _serve_lines(rows: list[dict]) -> list[str]:
    lines = [
        "| system | body | concurrency | req/s | images/s | p50 ms | p99 ms | errors | mean batch | "
        "server CPU ms/req | client CPU ms/req |",
        "|" + " --- |" * 11,
    ]
    for r in rows:
        errors = f"{r['errors']}" + "".join(f" ({k}: {v})" for k, v in r.items() if k.startswith("n_"))
        passes = (
            " (passes: " + ", ".join(map(str, r["passes_images_per_s"])) + ")" if "passes_images_per_s" in r else ""
        )
        cells = [
            r["system"] + _server_label(r) + passes,
            f"`{r['body']}`",
            r["concurrency"],
            f"{r['requests_per_s']:.0f}",
            f"{r['images_per_s']:.0f}",
            r["p50_ms"],
            r["p99_ms"],
            errors,
            r.get("mean_batch_images") or "-",
            r.get("server_cpu_ms_per_request") or "-",
            r.get("client_cpu_ms_per_request") or "-",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def serve_aims(result: dict) -> str:
    """Issue 19's aims, single-image requests, per concurrency and gateway body: images/s at least 0.8x the
    in-process batched ceiling (ort_decode with several images per call, best concurrency up to this one) at
    c >= 32; at least 2x the best peer's throughput at an equal or lower p99 from c = 8 up; at c = 1 a p50
    within 1.5x the in-process call's (ort_decode, one image); no errors."""
    rows = merged_passes(result["rows"])
    single = {(r["system"], r["body"], r["concurrency"]): r for r in rows if r["images_per_request"] == 1}
    batched = [r for r in rows if r["system"] == "ort_decode" and r["images_per_request"] > 1]
    if not batched or not any(k[0] == "gateway" for k in single):
        return ""
    lines = [
        "| concurrency | system, body | images/s | / batched ceiling (aim >= 0.8 at c >= 32) | best peer | "
        "/ best peer (aim >= 2, p99 <=, c >= 8) | p50 / in-process p50 (aim <= 1.5 at c = 1) | errors | met |",
        "|" + " --- |" * 9,
    ]
    verdicts: dict[str, list[bool]] = {}
    for c in sorted({k[2] for k in single}):
        ceiling = max((r["images_per_s"] for r in batched if r["concurrency"] <= max(c, 8)), default=None)
        peers = [r for (sys, _, cc), r in single.items() if sys.startswith("peer_") and cc == c and r["requests_per_s"]]
        peer = max(peers, key=lambda r: r["requests_per_s"]) if peers else None
        call = single.get(("ort_decode", "bytes", 1))
        for system, body in itertools.product(
            ("gateway", "gateway_alt", "gateway_granian_asgi"), ("multipart", "json")
        ):
            g = single.get((system, body, c))
            if g is None:
                continue
            checks, cells = [g["errors"] == 0], []
            if ceiling and c >= 32:
                ratio = g["images_per_s"] / ceiling
                checks.append(ratio >= 0.8)
                cells.append(f"{ratio:.2f} of {ceiling:.0f}")
            else:
                cells.append("-")
            if peer and c >= 8:
                ratio = g["requests_per_s"] / peer["requests_per_s"]
                p99_ok = g["p99_ms"] <= peer["p99_ms"]
                checks.append(ratio >= 2 and p99_ok)
                cells += [
                    f"{peer['system']} ({peer['requests_per_s']:.0f})",
                    f"{ratio:.2f}, p99 {g['p99_ms']} vs {peer['p99_ms']}",
                ]
            else:
                cells += [f"{peer['system']} ({peer['requests_per_s']:.0f})" if peer else "-", "-"]
            if c == 1 and call:
                ratio = g["p50_ms"] / call["p50_ms"]
                checks.append(ratio <= 1.5)
                cells.append(f"{ratio:.2f} ({g['p50_ms']} vs {call['p50_ms']} ms)")
            else:
                cells.append("-")
            verdicts.setdefault(system, []).append(all(checks))
            server = _server_label(g)
            lines.append(
                f"| {c} | {system}{server} `{body}` | {g['images_per_s']:.0f} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | "
                f"{g['errors']} | {'yes' if all(checks) else '**no**'} |"
            )
    summary = (
        " ".join(f"{system}: met at {sum(v)} of {len(v)} points." for system, v in verdicts.items())
        + " (`gateway` is `labelaudit serve` with its default HTTP server; `gateway_alt` the other server; "
        "`gateway_granian_asgi` granian over ASGI.)"
    )
    return (
        "\nAims (issue 19), single-image requests to the gateway (`labelaudit serve`, its default HTTP server); the "
        "batched ceiling is `ort_decode` with several images per call, the best at this concurrency or below:\n\n"
        + "\n".join(lines)
        + f"\n\n{summary}\n"
    )


def _load_note(result: dict) -> str:
    loads = [r["load_avg_1m"] for r in result["rows"] if r.get("load_avg_1m") is not None]
    return f" 1-minute load average at the end of each point: {min(loads)} to {max(loads)}." if loads else ""


def serve_table(result: dict) -> str:
    c = result["config"]
    versions = ", ".join(f"{k} {v['version']}" for k, v in c.get("peer_versions", {}).items())
    multi = _serve_rows(result, c.get("multi_images", 8))
    return (
        f"Closed-loop load, {c['duration']:.0f} s per point after {c['warmup']:.0f} s of warm-up, the same real "
        f"task-B PNGs for every system; bodies encoded once, {_serve_client(result)}, keep-alive pool = "
        f"concurrency. "
        f"`ort_tensors`: the gateway's MicroBatcher + onnxruntime on ready tensors, in process (the limit); "
        f"`ort_decode`: its InferenceCore (decode in worker threads, MicroBatcher, onnxruntime, top-3), in process; "
        f"`gateway`: `labelaudit serve` with default settings over HTTP (`multipart` is the common path, "
        f"`json` sends base64); peers ({versions}) serve the same model.onnx with their adaptive batching and "
        f"decode the same PNG bytes (MLServer: KServe v2 BYTES, base64 in JSON, parallel_workers "
        f"{c.get('mlserver_workers')}; BentoML: multipart, `batchable=True`, workers {c.get('bentoml_workers')})."
        f"{_serve_audit_note(result)} "
        f"Latencies are of successful requests; CPU per request is the server's process tree and the load "
        f"generator's own process (for in-process rows it is everything). The load generator, the servers and "
        f"other developers' work share the same cores: read ratios within this run, not absolute numbers. "
        f"Device: {devices(result)}. Commit {result['git_commit']}, {result['date']}."
        + (f" {c['serving_tree']}." if c.get("serving_tree") else "")
        + _load_note(result)
        + (f"\n\nNote: {c['note']}" if c.get("note") else "")
        + "\n\nOne image per request:\n\n"
        + "\n".join(_serve_lines(_serve_rows(result, 1)))
        + "\n"
        + (
            f"\n{c.get('multi_images', 8)} images per request:\n\n" + "\n".join(_serve_lines(multi)) + "\n"
            if multi
            else ""
        )
        + serve_aims(result)
    )


def _latencies(row: dict | None) -> str:
    return f"{row['p50_ms']} / {row['p99_ms']}" if row else "-"


def _ratio(row: dict, other: dict | None) -> str:
    """``row``'s requests/s over ``other``'s."""
    return f"{row['requests_per_s'] / other['requests_per_s']:.2f}" if other and other["requests_per_s"] else "-"


def serve_ratios(result: dict, per_request: int) -> str:
    """Per concurrency: the gateway (multipart) against in-process decode + onnxruntime and against the best
    peer (by req/s), throughput ratios and p50/p99 side by side; '-' where a system was not measured."""
    at = {
        (r["system"], r["body"], r["concurrency"]): r for r in result["rows"] if r["images_per_request"] == per_request
    }
    lines = [
        "| concurrency | gateway req/s | gateway p50 / p99 ms | ort_decode req/s | gateway / ort_decode | "
        "ort_decode p50 / p99 ms | best peer | gateway / best peer | best peer p50 / p99 ms |",
        "|" + " --- |" * 9,
    ]
    for c in sorted({k[2] for k in at}):
        gateway, decode = at.get(("gateway", "multipart", c)), at.get(("ort_decode", "bytes", c))
        peers = [r for (s, _, cc), r in at.items() if s.startswith("peer_") and cc == c and r["requests_per_s"]]
        if not gateway:
            continue
        peer = max(peers, key=lambda r: r["requests_per_s"]) if peers else None
        lines.append(
            f"| {c} | {gateway['requests_per_s']:.0f} | {_latencies(gateway)} | "
            + (f"{decode['requests_per_s']:.0f}" if decode else "-")
            + f" | {_ratio(gateway, decode)} | {_latencies(decode)} | "
            + (f"{peer['system']} ({peer['requests_per_s']:.0f} req/s)" if peer else "-")
            + f" | {_ratio(gateway, peer)} | {_latencies(peer)} |"
        )
    if len(lines) == 2:
        return ""
    return "\n".join(lines) + "\n"


def serve_resnet18_table(result: dict) -> str:
    """bench/results/serve_resnet18.json: ResNet-18 at 224 px on 640x480 JPEG photos, ours and the peers."""
    c = result["config"]
    versions = ", ".join(f"{k} {v['version']}" for k, v in c.get("peer_versions", {}).items())
    per = c.get("multi_images", 8)
    parts = [
        f"The closed loop of `bench/serve.py` on a model of real size: torchvision's ResNet-18 (seeded random "
        f"weights) exported by `export_model` with an ImageNet-style card (224x224 RGB, shorter side to 256 "
        f"then the centre 224, crop_pct 0.875, bilinear, ImageNet mean/std, no JPEG draft). Payload: "
        f"{c.get('payload', 'JPEG photos')}; one JPEG per request. {c['duration']:.0f} s per point after "
        f"{c['warmup']:.0f} s of warm-up, {_serve_client(result)}; the peers ({versions or 'none measured'}) serve "
        f"the same model.onnx and decode the same JPEG bytes with a standalone mirror of the card's preprocessing "
        f"(their probabilities checked against ours before timing). Here the work per image is decoding a "
        f"640x480 JPEG and a ResNet-18 forward pass, so the ratios say how much of the in-process limit the "
        f"gateway keeps at real work per image. The load generator, the servers and other work share "
        f"the cores. Device: {devices(result)}. Commit {result['git_commit']}, {result['date']}."
        + (f" {c['serving_tree']}." if c.get("serving_tree") else "")
        + _load_note(result)
        + (f"\n\nNote: {c['note']}" if c.get("note") else ""),
    ]
    for n in [1] + ([per] if per > 1 else []):
        title = "One image per request" if n == 1 else f"{n} images per request"
        ratios, rows = serve_ratios(result, n), _serve_rows(result, n)
        if ratios:
            parts.append(
                f"{title}, the gateway (multipart) against the in-process limit and the best peer:\n\n{ratios}"
            )
        if rows:
            parts.append(f"{title}, every row:\n\n" + "\n".join(_serve_lines(rows)))
    return "\n\n".join(part.rstrip("\n") for part in parts) + "\n"


def report_table(result: dict) -> str:
    """The nightly report: labeler ranking and flags against the simulation's truth, then the scale runs."""
    quality = [r for r in result["rows"] if r.get("kind") == "quality" and r.get("store") != "postgres"]
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in quality:
        cells[(r["multi"], r["scope"], r["detector"], r["data"])].append(r)
    lines = [
        "| items with 3 labels | scope | detector | labels of | estimates from | mean abs error of the estimate | Spearman vs true error (mean, min) | flagged = truly noisy | flagged = oracle's | runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (multi, scope, detector, data), rs in sorted(
        cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3], kv[0][2])
    ):
        rho = [r["spearman_vs_true_error"] for r in rs]
        flags = [(r["flagged_equals_truly_noisy"], r["flagged_equals_oracle"]) for r in rs if "flagged" in r]
        hits = [f"{sum(f[i] for f in flags)}/{len(flags)}" if flags else "-" for i in (0, 1)]
        mae = [r["mean_abs_error"] for r in rs if "mean_abs_error" in r]
        sources = sorted({x["source"] for r in rs for x in r["per_labeler"].values() if "source" in x}) or ["-"]
        lines.append(
            f"| {multi:.0%} | {scope} | {detector} | {data} | {', '.join(sources)} | "
            f"{f'{np.mean(mae):.3f}' if mae else '-'} | {np.mean(rho):.3f}, {min(rho):.2f} | {hits[0]} | "
            f"{hits[1]} | {len(rs)} |"
        )
    pg = [r for r in result["rows"] if r.get("kind") == "quality" and r.get("store") == "postgres"]
    same = sum(bool(r.get("same_report_sqlite_postgres")) for r in pg)
    c = result["config"]
    if not quality:
        return report_scale_table(result)
    return (
        f"Labelers ranked and flagged by `labelaudit report` on a simulated stream: the recipe's five labelers at "
        f"{c.get('noise', 0.4):.0%} noise label task B's clean test images ({c.get('stream_images'):,}, size "
        f"`{c.get('size')}`, seeds {c.get('seeds')}), over {c.get('nights')} nights, through the real Auditor "
        f"({report_model(result)}, ONNX). Truly noisy: {c.get('truly_noisy')}. Flag test: {c.get('flag_test')}. "
        "Oracle's: the same step-down test with Fisher exact tests on the true error counts, what a perfect "
        "reference would flag. cleanlab: "
        "`get_label_quality_multiannotator`, 1 - annotator quality (it does not flag). SQLite and PostgreSQL "
        f"gave the same report in {same} of {len(pg)} comparisons. Device: {devices(result)}.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + report_scale_table(result)
    )


def report_model(result: dict) -> str:
    """How the report bench's model was trained: ``--method`` and, for auto, what it picked and how well."""
    method = result["config"].get("method", "fasten")  # runs before the option trained FasTEN
    rows = [r for r in result["rows"] if r.get("model_method")]
    picked = sorted({r["model_method"] for r in rows})
    accs = [r["model_test_acc"] for r in rows if r.get("model_test_acc") is not None]
    epochs = result["config"].get("epochs_b")
    text = f"task B from classifier A with `--method {method}`" + (f" over {epochs} epochs" if epochs else "")
    if picked and picked != [method]:
        text += f" (it picked {', '.join(picked)})"
    if accs:
        low, high = min(accs), max(accs)
        text += f", clean test accuracy {low:.1%}" + (f" to {high:.1%}" if high > low else "")
    return text


def report_scale_table(result: dict) -> str:
    rows = [r for r in result["rows"] if r.get("kind") == "scale"]
    if not rows:
        return ""
    lines = [
        "| store | records in store | relabel answers | scope | records in window | what | seconds "
        "| of which building (SQL, statistics) | peak RSS MB | load 1m |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        what = "the report" if r["mode"] == "report" else "fetch the records into Python (baseline)"
        sql = f"{r['sql_seconds']:.1f}" if r["mode"] == "report" else "-"
        answers = f"{r['relabel_answers']:,}" if "relabel_answers" in r else "-"
        lines.append(
            f"| {r['store']} | {r['records']:,} | {answers} | {r['scope']} | {r['window_records']:,} | {what} | "
            f"{r['seconds']:.1f} | {sql} | {r['peak_rss_mb']:.0f} | {r.get('loadavg_1m_mean', '-')} |"
        )
    return (
        "A synthetic store (50 labelers, 20% of items with three labels), each run in a fresh process "
        "(peak RSS is the process's VmHWM; imports included, so the floor is the interpreter with numpy, scipy "
        "and matplotlib):\n\n" + "\n".join(lines) + "\n"
    )


DECODE_SOURCES = ["as shipped", "upscaled", "tiled"]


def _pixels(size: str) -> int:
    w, h = (int(v) for v in size.split("x"))
    return w * h


def finetune_table(result: dict) -> str:
    """The ``finetune`` rows of real_models.json (bench/finetune.py). "" when there are none."""
    rows = [r for r in result["rows"] if r.get("kind") == "finetune"]
    if not rows:
        return ""
    lines = [
        "| classifier A | method | classifier A alone | fine-tuned | epochs (A, B) | images/s | load avg |",
        "|" + " --- |" * 7,
    ]
    for r in rows:
        lines.append(
            f"| `{r['arch']}` | {r['method']} | {r['classifier_a_clean_test_acc']:.4f} | "
            f"{r['clean_test_acc']:.4f} | {r['classifier_a_epochs']}, {r['epochs']} | "
            f"{r['train_images_per_s']:.0f} | {r['loadavg_1m']} |"
        )
    return (
        "### Classifier A from torchvision and timm (`bench/finetune.py`)\n\n"
        "Classifier A trained on task A from scratch, saved as the architecture's own state dict, loaded through "
        "`--init <family>:<arch>=a.pth`, fine-tuned on task B (40% labeler noise, 1% trusted). Clean test "
        f"accuracy on task B; size `{rows[0]['size']}`, Fashion-MNIST at 28 px as 3 channels.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def ddp_table(result: dict) -> str:
    """The ``ddp`` rows of real_models.json (bench/ddp.py). "" when there are none."""
    rows = [r for r in result["rows"] if r.get("kind") == "ddp"]
    if not rows:
        return ""
    tolerance = result["config"].get("ddp", {}).get("tolerance", "?")
    lines = [
        "| method | processes | seed | backend | clean test acc | vs 1 process, seed 0 | within tolerance | seconds | "
        "load avg |",
        "|" + " --- |" * 9,
    ]
    for r in rows:
        diff = "-" if "difference" not in r else f"{r['difference']:+.4f}"
        lines.append(
            f"| {r['method']} | {r['processes']} | {r.get('seed', 0)} | {r['backend']} | {r['clean_test_acc']:.4f} "
            f"| {diff} | {'yes' if r['agrees_with_single'] else '**no**'} | {r['seconds']} | {r['loadavg_1m']} |"
        )
    return (
        "### Several processes (`bench/ddp.py`)\n\n"
        "`torchrun --nproc-per-node N -m labelaudit train` against one process, same global batch and seed, "
        "fine-tuning one classifier A; one process with another seed beside them shows how far two honest runs "
        f"fall apart anyway. Agreement: clean test accuracy within {tolerance}. On CPU (gloo) BatchNorm "
        "statistics are per process.\n\n" + "\n".join(lines) + "\n"
    )


def loader_table(result: dict) -> str:
    """The ``loader`` rows of real_models.json (bench/loader.py): one pass of the training loader, peak RSS
    against the number of images. "" when the file holds no such rows."""
    rows = [r for r in result["rows"] if r.get("kind") == "loader"]
    if not rows:
        return ""
    lines = [
        "| mode | image size | images | workers | peak RSS, main MB | peak RSS, a worker MB | images/s | load avg |",
        "|" + " --- |" * 8,
    ]
    for r in rows:
        lines.append(
            f"| `{r['mode']}` | {r['image_size']} | {r['images']:,} | {r['workers']} | {r['peak_rss_mb']:.0f} "
            f"| {r['peak_worker_rss_mb']:.0f} | {r['images_per_s']:,.0f} | {r['loadavg_1m']} |"
        )
    stream = sorted((r for r in rows if r["mode"] == "stream" and r["image_size"] == 224), key=lambda r: r["images"])
    verdict = ""
    if len(stream) >= 2:
        small, big = stream[0], stream[-1]
        verdict = (
            f"Streaming {big['images']:,} images instead of {small['images']:,} "
            f"({big['images'] // small['images']}x) changes the main process's peak RSS by "
            f"{big['peak_rss_mb'] - small['peak_rss_mb']:+.0f} MB ({big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x) "
            f"and a worker's by {big['peak_worker_rss_mb'] - small['peak_worker_rss_mb']:+.0f} MB; the decoded "
            f"images alone would take {big['images'] * 224 * 224 * 3 / 2**30:.0f} GB."
        )
    return (
        "### The training loader (`bench/loader.py`)\n\n"
        "One pass over the images in batches of 256, each size in a fresh process. `stream`: RGB JPEGs at 224 px "
        "(Fashion-MNIST resized, one distinct file per image), decoded by worker processes; `memory` vs `stream` at "
        "28 px: the demo's images, cached (after the cache is filled) against decoded each pass.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + verdict
        + "\n"
    )


def decode_table(result: dict) -> str:
    """The ``decode`` rows of real_models.json (bench/decode.py): plain Pillow against the ``jpeg_draft`` path,
    per core, one line per source x resize rule. "" when the file holds no such rows."""
    points: dict[tuple[str, str, str], dict[str, dict]] = defaultdict(dict)
    for r in result["rows"]:
        if r.get("kind") == "decode":
            points[(r["source"], r["source_size"], r["resize"])][r["decoder"]] = r
    if not points:
        return ""
    lines = [
        "| source | size | resize | decoded at (draft) | pillow images/s | pillow-draft images/s | draft / pillow "
        "(aim >= 3) | simplejpeg images/s (reference) | draft vs full decode: mean, max abs diff | draft vs "
        "training path: max abs diff | load avg |",
        "|" + " --- |" * 11,
    ]
    met, aimed = 0, 0
    order = sorted(
        points, key=lambda k: (DECODE_SOURCES.index(k[0]) if k[0] in DECODE_SOURCES else 9, _pixels(k[1]), k[2])
    )
    for source, size, rule in order:
        by = points[(source, size, rule)]
        plain, draft, sj = by.get("pillow"), by.get("pillow-draft"), by.get("simplejpeg")
        if not plain or not draft:
            continue
        ratio = draft.get("vs_pillow") or draft["images_per_s_per_core"] / plain["images_per_s_per_core"]
        w, h = (int(v) for v in size.split("x"))
        if w >= 640 and h >= 480:
            aimed += 1
            met += ratio >= 3
        lines.append(
            f"| {source} | {size} | `{rule}` | {draft.get('decoded_size', '-')} | {plain['images_per_s_per_core']:.0f} "
            f"| {draft['images_per_s_per_core']:.0f} | {ratio:.2f} | "
            + (
                f"{sj['images_per_s_per_core']:.0f} ({sj['images_per_s_per_core'] / plain['images_per_s_per_core']:.2f}x)"
                if sj
                else "-"
            )
            + f" | {draft.get('mean_abs_diff_vs_full_decode', float('nan')):.2f}, {draft.get('max_abs_diff_vs_full_decode', '-')} "
            f"| {draft.get('max_abs_diff', '-')} | {draft.get('loadavg_1m', '-')} |"
        )
    c = result["config"].get("decode", {})
    verdict = (
        f"Aim (draft at least 3x plain Pillow per core on photos of 640x480 or more): met at {met} of {aimed} points."
    )
    if met < aimed:
        verdict += " **Not met** at the others (ratio column)."
    return (
        "### JPEG decoding per core (`bench/decode.py`)\n\n"
        "JPEG bytes in memory to the model's 224x224x3 uint8 through `pixels_from_bytes` (the one path training and "
        "serving share), one thread: plain Pillow (`jpeg_draft: false`) against the model card's `jpeg_draft` "
        "(Pillow's `draft()`, DCT-domain scaling to the smallest of 1, 1/2, 1/4, 1/8 that still covers the resize). "
        "Images per CPU second of the timing thread, median of "
        f"{c.get('reps', '?')} repetitions, decoders interleaved. Sources: scikit-learn's two photos as shipped, and "
        f"made from them at JPEG quality {c.get('jpeg_quality_of_made_sources', 90)}: `upscaled` (smooth, cheap to "
        "entropy-decode) and `tiled` (the photos side by side at their own scale: a real photo's detail per pixel). "
        "`shorter_side_center_crop` is crop_pct 0.875 (shorter side to 256). simplejpeg (libjpeg-turbo with M/8 "
        "scaling) is a reference, not a path labelaudit takes. Differences are in 0..255 levels, of the draft's "
        "pixels against plain Pillow's and against the training path's (`pixels_from_file`, the same spec). "
        f"Device: {devices(result)}. {commits(result)}, {result['date']}.\n\n" + "\n".join(lines) + f"\n\n{verdict}\n"
    )


def _yes_no(value) -> str:
    return "-" if value is None else ("yes" if value else "**no**")


def _crash_table(rows: list[dict]) -> str:
    lines = [
        "| store | consumers | messages | kill -9 | broker restarts | store restarts | lost | duplicated | "
        "poison sent | poison dead-lettered | dead letters | good dead-lettered | relabel topic = store | "
        "stalled | consumer exits | wall s | load avg (max) |",
        "|" + " --- |" * 17,
    ]
    for r in rows:
        exits = r.get("unexpected_exits", 0)
        lines.append(
            f"| {r['store']} | {r['consumers']} | {r['messages']:,} | {r['kills']} | {r['broker_restarts']} | "
            f"{r['store_restarts']} | {r['lost']:,} | {r['duplicated']} | {r['poison_sent']} | "
            f"{r['poison_dead_lettered']} | {r.get('dead_lettered', '-')} | {r.get('good_dead_lettered', '-')} | "
            f"{_yes_no(r.get('relabel_matches_store'))} | {'**yes**' if r['stalled'] else 'no'} | {exits} | "
            f"{r['seconds']:.0f} | {r.get('load_avg_1m', '-')} ({r.get('load_avg_1m_max', '-')}) |"
        )
    notes = []
    for r in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in r.get("dead_lettered_by_reason", {}).items()) or "none"
        notes.append(f"- {r['store']}: dead letters by `labelaudit.dlq.reason`: {reasons}.")
        if r.get("events"):
            notes.append(
                "  Events (seconds from the first message produced): "
                + ", ".join(
                    f"{e['event'].replace('_', ' ')} at {e['at_s']:.0f}" + (" (failed)" if e.get("error") else "")
                    for e in r["events"]
                )
                + "."
            )
        if r["stalled"]:
            notes.append(
                f"  Stalled: {r.get('stall_reason')}; poison in the uncommitted window of the lagging "
                f"partitions: {', '.join(r.get('stall_suspects') or []) or 'none'}; committed "
                f"{r.get('committed')} of {r.get('end_offset')} offsets."
            )
        if r["stalled"] and r.get("consumer_errors"):
            notes.append(
                "  The consumers' errors, most frequent first: "
                + "; ".join(f"`{m}` x{n}" for m, n in list(r["consumer_errors"].items())[:3])
                + "."
            )
        if r.get("unexpected_exits"):
            notes.append(f"  {r['unexpected_exits']} consumer(s) exited by themselves (restarted by the harness).")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _poison_table(rows: list[dict]) -> str:
    """Per poison kind and store: sent, dead-lettered (with the reasons given), written to the store."""
    kinds = sorted({k for r in rows for k in r.get("poison_by_kind", {})})
    if not kinds:
        return ""
    lines = [
        "| poison kind | expected reason | "
        + " | ".join(f"{r['store']}: dead-lettered / sent (reasons), stored" for r in rows)
        + " |",
        "|" + " --- |" * (2 + len(rows)),
    ]
    for kind in kinds:
        expected = next(r["poison_by_kind"][kind]["expected"] for r in rows if kind in r.get("poison_by_kind", {}))
        cells = []
        for r in rows:
            k = r.get("poison_by_kind", {}).get(kind)
            if not k:
                cells.append("-")
                continue
            reasons = ", ".join(f"{a} {b}" for a, b in k["reasons"].items())
            cell = f"{k['dead_lettered']} / {k['sent']}" + (f" ({reasons})" if reasons else "")
            if k["dead_lettered"] < k["sent"]:
                cell = f"**{cell}**"
            cells.append(cell + (f", **stored {k['stored']}**" if k["stored"] else ""))
        lines.append(f"| `{kind}` | {expected} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _soak_table(rows: list[dict]) -> str:
    lines = [
        "| store | workers | seconds | req/s | requests | bad | errors_5xx | p99 ms first / last window | "
        "RSS MB first / last window | rss_growth | 5xx on bad requests | 429 | load avg |",
        "|" + " --- |" * 13,
    ]
    for r in rows:
        growth = "-" if r.get("rss_growth") is None else f"{r['rss_growth']:+.1%}"
        lines.append(
            f"| {r['store']} | {r['workers']} | {r['seconds']:.0f} (+{r['warmup_s']:.0f} warm-up) | {r['rate']:.0f} | "
            f"{r['requests']:,} | {r['bad_requests']:,} | {r['errors_5xx']} | {r['p99_ms_first_minute']} / "
            f"{r['p99_ms_last_minute']} | {r['rss_mb_first_minute']} / {r['rss_mb_last_minute']} | {growth} | "
            f"{r.get('bad_5xx', '-')} | {r.get('n_429', '-')} | {r.get('load_avg_1m', '-')} |"
        )
    notes = []
    for r in rows:
        kinds = "; ".join(f"`{k}` " + ", ".join(f"{s} x{n}" for s, n in v.items()) for k, v in r["bad_by_kind"].items())
        notes.append(f"- {r['store']}: bad requests, by kind and answer: {kinds}.")
        if r.get("errors_by_kind"):
            notes.append(
                "  Good requests that failed: " + ", ".join(f"{k} x{v}" for k, v in r["errors_by_kind"].items())
            )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def reliability_table(result: dict) -> str:
    """bench/results/reliability.json: the crash run (kills, restarts, poison) per store, and the soak."""
    c = result["config"]
    crash = [r for r in result["rows"] if r["kind"] == "crash"]
    soak = [r for r in result["rows"] if r["kind"] == "soak"]
    changed = sorted(
        {p for r in result["rows"] for p in r.get("uncommitted_changes", c.get("uncommitted_changes", []))}
    )
    parts = [
        f"`bench/reliability.py{' --quick' if c.get('quick') else ''}`: what tests/stream and tests/serving "
        f"drive in small, at size. Device: {devices(result)}. {commits(result)}, {result['date']}."
        + (
            f" The tree had uncommitted changes in {', '.join(f'`{p}`' for p in changed)} (other work in "
            "progress): the code that ran is the commit plus those."
            if changed
            else ""
        )
        + (f"\n\nNote: {c['note']}" if c.get("note") else "")
    ]
    if crash:
        parts.append(
            f"**Crash.** {crash[0]['messages']:,} messages produced at {crash[0].get('rate', 0):.0f}/s to a "
            f"{c.get('partitions', 4)}-partition topic on a real broker, audited by {crash[0]['consumers']} "
            "`labelaudit consume` processes in one group; at random moments of the production window a consumer "
            "is `kill -9`ed and restarted, the broker is stopped and started once, and PostgreSQL too (not SQLite). "
            f"{c.get('poison', 0.01):.1%} of the messages are poison, every kind in turn. Lost: good messages "
            "without a verdict in the store at the end; duplicated: rows beyond one per (item, labeler, model "
            f"version). Stalled: no committed-offset progress for {c.get('stall_seconds', 120):.0f} s with lag "
            "above 0 (the harness then stops waiting and counts what is there, so a stalled run's losses are mostly "
            "messages never reached).\n\n" + _crash_table(crash)
        )
        poison = _poison_table(crash)
        if poison:
            parts.append("Poison, per kind (bold: not all dead-lettered, or written to the store):\n\n" + poison)
    if soak:
        parts.append(
            "**Soak.** `labelaudit serve` (uvicorn workers) under an open-loop load with "
            f"{c.get('bad_fraction', 0.1):.0%} bad requests (the gateway's body limit set to "
            f"{c.get('soak_body_limit', 0):,} bytes for the oversize ones). errors_5xx: good requests answered "
            "500-599 or not at all, warm-up included; p99 of good requests and mean RSS of the worker processes "
            f"in the first and the last window of {soak[0].get('window_s', 60):.0f} s after the warm-up; "
            "rss_growth = last / first - 1.\n\n" + _soak_table(soak)
        )
    return "\n\n".join(part.rstrip("\n") for part in parts) + "\n"


def real_models_table(result: dict) -> str:
    """real_models.json holds rows of several kinds (``decode``, ``loader``, ``ddp``, ``finetune``); each kind
    renders its own part, and a kind with no rows renders nothing."""
    parts = (finetune_table(result), ddp_table(result), loader_table(result), decode_table(result))
    return "\n".join(part for part in parts if part)


def compare_table(result: dict) -> str:
    """``bench/compare.py``'s results: per point, the median after/before ratio over the rounds, then every round."""
    c = result["config"]
    keys, metrics = c["key"], c["metrics"]
    lines = [
        f"Change: {c['change']}. The benchmark run from the tree before ({', '.join(sorted({r['before'] for r in c['rounds']}))}) "
        f"and after ({', '.join(sorted({r['after'] for r in c['rounds']}))}) alternately, {len(c['rounds'])} rounds on one "
        f"machine in one sitting; ratio = after / before (a throughput below 1, a latency above 1: slower). "
        f"Device: {devices(result)}. {result['date']}." + (f" {c['note']}" if c.get("note") else ""),
        "",
        "| " + " | ".join([*keys, *(f"median ratio {m}" for m in metrics), "rounds"]) + " |",
        "|" + " --- |" * (len(keys) + len(metrics) + 1),
    ]
    for m in c["medians"]:
        lines.append(
            "| "
            + " | ".join(
                [*(str(m[k]) for k in keys), *(str(m[f"median_ratio_{x}"]) for x in metrics), str(m["rounds"])]
            )
            + " |"
        )
    lines += ["", "Every round (load average at the end of each point, before / after):", ""]
    lines.append("| round | " + " | ".join([*keys, *(f"{m} before / after" for m in metrics), "load avg"]) + " |")
    lines.append("|" + " --- |" * (len(keys) + len(metrics) + 2))
    for r in result["rows"]:
        cells = [str(r["round"]), *(str(r[k]) for k in keys)]
        cells += [f"{r[f'before_{m}']} / {r[f'after_{m}']}" for m in metrics]
        cells.append(f"{r['before_load_avg_1m']} / {r['after_load_avg_1m']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PROFILE_DOCS = Path(__file__).parent.parent / "docs" / "serving.md"
PROFILE_BEGIN = (
    "<!-- profile_gateway table: generated by python -m bench.tables from bench/results/profile_gateway*.json -->"
)
PROFILE_END = "<!-- end of the profile_gateway table -->"
PROFILE_POINTS = [("multipart", 1), ("json", 1), ("multipart", 64), ("json", 64)]


def _profile_cell(row: dict | None, first: dict | None) -> str:
    """One stage at one point: µs per request and its share; a later label adds its change from the first."""
    if row is None or row.get("cpu_us_per_request") is None:
        return "-"
    cell = f"{row['cpu_us_per_request']:.0f} ({row['share_pct']:.0f}%)"
    if first is not None and first is not row and first.get("cpu_us_per_request") is not None:
        cell += f" {row['cpu_us_per_request'] - first['cpu_us_per_request']:+.0f}"
    return cell


def profile_gateway_table(results: list[dict]) -> str:
    """``bench/profile_gateway.py``'s results, one file per label (before and after a change): the stages as
    rows, a column per point and label; a later label's cells carry their change from the first label's."""
    at = {(i, r["body"], r["concurrency"], r["stage"]): r for i, result in enumerate(results) for r in result["rows"]}
    stages = list(dict.fromkeys(r["stage"] for result in results for r in result["rows"]))
    points = [p for p in PROFILE_POINTS if any((i, *p, stages[0]) in at for i in range(len(results)))]
    points += sorted({k[1:3] for k in at} - set(points), key=lambda p: (p[1], p[0]))
    columns = [(p, i) for p in points for i in range(len(results)) if (i, *p, stages[0]) in at]
    labels = [result["config"]["label"] for result in results]
    lines = [
        "| stage | "
        + " | ".join(f"`{b}` c={c}" + (f" {labels[i]}" if len(results) > 1 else "") for (b, c), i in columns)
        + " |",
        "|" + " --- |" * (len(columns) + 1),
    ]
    for stage in stages:
        cells = [_profile_cell(at.get((i, *p, stage)), at.get((0, *p, stage))) for p, i in columns]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    for key, name in [
        ("attributed_cpu_us_per_request", "all stages, µs/request"),
        ("measured_cpu_us_per_request", "server CPU from /proc, µs/request"),
        ("unsampled_cpu_us_per_request", "threads never sampled, µs/request"),
        ("sampled_cpu_us_per_request", "samples / rate, µs/request (unweighted)"),
        ("py_spy_cpu_us_per_request", "py-spy's own CPU, µs/request"),
        ("runqueue_wait_pct", "run-queue wait, % of runnable time"),
        ("woken_pct", "samples at a wait leaf, %"),
        ("requests_per_s", "requests/s"),
        ("load_avg_1m", "load average (1 min)"),
    ]:
        cells = [str(at[(i, *p, stages[0])].get(key, "-")) for p, i in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    runs = []
    for result in results:
        c = result["config"]
        runs.append(
            f"`{c['label']}`: `python -m bench.profile_gateway --name {result['bench']}`, commit {result['git_commit']}"
            + (f" ({c['serving_tree']})" if c.get("serving_tree") else "")
            + f", {result['date']}; {c['duration']} s windows after {c['warmup']} s of warm-up, "
            f"{c.get('client_version') or c['client']}, {c['payload']}; gateway {c['gateway_settings']}; "
            f"{c['py_spy']} ({c['py_spy_options']}). Device: {devices(result)}."
        )
    others = [
        f"`{r['body']}` c={r['concurrency']}: " + ", ".join(f"`{leaf}` ({n})" for leaf, n in r["other_top_leaves"][:3])
        for r in results[-1]["rows"]
        if r["stage"] == "other" and r["other_top_leaves"]
    ]
    return (
        "CPU µs per request by stage: each server thread's CPU in the window (schedstat) split over the stages of "
        "its py-spy samples, summed over the threads of every process, / the requests answered in the window; in "
        "brackets the stage's share"
        + (", then the change from the first label's µs" if len(results) > 1 else "")
        + ". Stages by `STAGE_RULES` in `bench/profile_gateway.py` (the innermost frame a rule matches decides); "
        "samples at a wait leaf (a woken thread waiting for a core) take no CPU. Read shares from a run whose "
        "run-queue wait is low: on a busy machine `event loop` also holds a woken loop's wait for a core.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(f"- {run}" for run in runs)
        + ("\n\n`other`'s most sampled leaf frames: " + "; ".join(others) + "." if others else "")
        + "\n"
    )


def update_serving_docs(names: list[str] | None = None) -> None:
    """The profile table in docs/serving.md, between its markers: every ``profile_gateway*.json`` (or
    ``names``), in the order they were run, or a line saying how to make it."""
    found = [_load(n) for n in names] if names else [_load(p.stem) for p in RESULTS.glob("profile_gateway*.json")]
    results = sorted((r for r in found if r), key=lambda r: r["config"].get("started", r["date"]))
    text = (
        profile_gateway_table(results)
        if results
        else "Not measured yet: `python -m bench.profile_gateway` writes `bench/results/profile_gateway.json` "
        "and this table.\n"
    )
    doc = PROFILE_DOCS.read_text()
    begin, end = doc.index(PROFILE_BEGIN) + len(PROFILE_BEGIN), doc.index(PROFILE_END)
    PROFILE_DOCS.write_text(doc[:begin] + "\n\n" + text + "\n" + doc[end:])


def update_docs() -> None:
    sections = [
        "# Benchmarks\n",
        "Generated by `python -m bench.tables` from `bench/results/*.json`; do not edit by hand.\n",
    ]
    for name, title, render in [
        ("train_noise", "Training under label noise (`bench/train_noise.py`)", train_noise_table),
        (
            "train_protocol",
            "Issue 17's protocol: every method on one 60-epoch schedule, task B with 5,000 unlabeled images "
            "(`bench/train_noise.py --name train_protocol --epochs-b 60 --unlabeled 5000`)",
            train_noise_table,
        ),
        ("train_probes", "Training variants tried (`bench/train_noise.py --name train_probes`)", train_noise_table),
        (
            "train_multi",
            "Several labels per image (`bench/train_noise.py --name train_multi --multi 0.1 --epochs-b 60 "
            "--unlabeled 5000`)",
            train_multi_table,
        ),
        (
            "train_qa",
            "A QA pass's checks as trusted rows (`bench/train_noise.py --name train_qa --qa 0.05 --epochs-b 60 "
            "--unlabeled 5000`)",
            train_qa_table,
        ),
        (
            "harvest",
            "A night's relabel answers in the next training run (`bench/harvest.py`)",
            harvest_table,
        ),
        ("card_rates", "The card's labeler rates with several labels (`bench/card_rates.py`)", card_rates_table),
        ("card_audit", "The card's labeler rates with a QA pass (`bench/card_audit.py`)", card_audit_table),
        (
            "report_rates",
            "The report's labeler rates from shared items (`bench/report_rates.py`)",
            report_rates_table,
        ),
        (
            "report_audit",
            "The report's labeler rates from the audit sample's answers (`bench/report_audit.py`)",
            report_audit_table,
        ),
        (
            "train_conditional",
            "Labels whose errors are untied from the images (`bench/train_noise.py --name train_conditional "
            "--methods ...,class_conditional=1 --epochs-b 60 --unlabeled 5000`)",
            train_conditional_table,
        ),
        (
            "train_bounds",
            "What the right labels alone are worth (`bench/train_noise.py --name train_bounds --methods "
            "oracle:drop_wrong=1 --epochs-b 60 --unlabeled 5000`)",
            train_bounds_table,
        ),
        (
            "student_pairs",
            "Student-round settings in pairs, one teacher per seed (`bench/student_pairs.py`)",
            student_pairs_table,
        ),
        (
            "train_full",
            "Training at full size (`bench/train_noise.py --name train_full --size full`)",
            train_noise_table,
        ),
        ("train_noise_quick", "Training under label noise, quick (`bench/train_noise.py --quick`)", train_noise_table),
        ("label_errors", "Label-error detection (`bench/label_errors.py`)", label_errors_table),
        ("stream", "The Kafka stream (`bench/stream.py`)", stream_table),
        ("serve", "Serving under load (`bench/serve.py`)", serve_table),
        (
            "serve_resnet18",
            "Serving ResNet-18 at 224 px on JPEG photos (`bench/serve.py --model resnet18-224`)",
            serve_resnet18_table,
        ),
        (
            "refactor_issue18_serve",
            "Issue 18's redesign, before and after: serving (`bench/compare.py`)",
            compare_table,
        ),
        (
            "refactor_issue18_stream",
            "Issue 18's redesign, before and after: the stream (`bench/compare.py`)",
            compare_table,
        ),
        ("report", "The nightly report (`bench/report.py`)", report_table),
        ("real_models", "Real models and data (`bench/results/real_models.json`)", real_models_table),
        ("reliability", "Reliability at size (`bench/reliability.py`)", reliability_table),
        ("reliability_quick", "Reliability, quick (`bench/reliability.py --quick`)", reliability_table),
    ]:
        result = _load(name)
        text = render(result) if result else ""
        if text:
            sections.append(f"## {title}\n\n{text}")
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text("\n".join(sections))
    update_serving_docs()


if __name__ == "__main__":
    update_docs()
