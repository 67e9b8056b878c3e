"""Before and after a change, on one machine in one sitting: the same benchmark run from two source trees,
alternately (before, after, before, after...), and the after/before ratio of each point.

Each ``--pair`` is one round: a results file written by the benchmark from the tree before the change and one
written from the tree after it, right after each other. Rows are matched by ``--key`` (the point) and each
``--metric`` gives ``before_<m>``, ``after_<m>`` and ``ratio_<m>`` (after / before; for a latency above 1 is
slower, for a throughput below 1 is slower), with both runs' load averages. Writes
bench/results/<name>.json; the table in docs/benchmarks.md gives each point's median ratio over the rounds.

    python -m bench.compare --name refactor_serve --key system body concurrency \
        --metric images_per_s p50_ms p99_ms --pair before_1.json after_1.json --pair before_2.json after_2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import write_results


def paired_rows(before: dict, after: dict, keys: list[str], metrics: list[str], round_: int) -> list[dict]:
    """One row per point present in both results: the point's keys, each metric before, after and their ratio."""
    earlier = {tuple(r.get(k) for k in keys): r for r in before["rows"]}
    rows = []
    for r in after["rows"]:
        point = tuple(r.get(k) for k in keys)
        if (b := earlier.get(point)) is None:
            continue
        row = {"round": round_, **dict(zip(keys, point, strict=True))}
        for m in metrics:
            row[f"before_{m}"], row[f"after_{m}"] = b.get(m), r.get(m)
            both = b.get(m) is not None and r.get(m) is not None and b[m] != 0
            row[f"ratio_{m}"] = round(r[m] / b[m], 3) if both else None
        row["before_load_avg_1m"], row["after_load_avg_1m"] = b.get("load_avg_1m"), r.get("load_avg_1m")
        rows.append(row)
    return rows


def median_ratios(rows: list[dict], keys: list[str], metrics: list[str]) -> list[dict]:
    """Per point, the median of each metric's after/before ratio over the rounds."""
    points: dict[tuple, list[dict]] = {}
    for r in rows:
        points.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for point, mine in points.items():
        summary = {**dict(zip(keys, point, strict=True)), "rounds": len(mine)}
        for m in metrics:
            ratios = [r[f"ratio_{m}"] for r in mine if r[f"ratio_{m}"] is not None]
            summary[f"median_ratio_{m}"] = round(statistics.median(ratios), 3) if ratios else None
        out.append(summary)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="results file name (bench/results/<name>.json)")
    parser.add_argument("--key", nargs="+", required=True, help="the row keys that name a point")
    parser.add_argument("--metric", nargs="+", required=True)
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--change", default="", help="what changed between the trees, for the record")
    parser.add_argument("--note", default="", help="how to read the numbers (noise, what a row measures)")
    args = parser.parse_args()
    rows, sources = [], []
    for n, (before_path, after_path) in enumerate(args.pair, start=1):
        before, after = json.loads(Path(before_path).read_text()), json.loads(Path(after_path).read_text())
        rows += paired_rows(before, after, args.key, args.metric, n)
        sources.append({"before": before["git_commit"], "after": after["git_commit"], "config": after["config"]})
    device = json.loads(Path(args.pair[0][1]).read_text())["device"]
    config = {
        "change": args.change,
        "note": args.note,
        "key": args.key,
        "metrics": args.metric,
        "rounds": sources,
        "medians": median_ratios(rows, args.key, args.metric),
    }
    print(write_results(args.name, config=config, rows=rows, device=device))


if __name__ == "__main__":
    main()
