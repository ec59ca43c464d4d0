"""The report: per task untuned and best tuned times, as text and a plot."""

from __future__ import annotations

import os

import numpy as np

from ...atomic_files import atomic_write
from bnn_tvm.schedules.tuning_files import FAILED_RUN_SECS

from .records import record_seconds, untuned_label


REPORT_FILE = "report.json"


def build_report(path, spec, db_dir, tasks, records, untuned, trials_run, seconds, where: str) -> dict:
    rows = []
    for task in tasks:
        base = (untuned.get(task.key) or {}).get("seconds")
        valid = [r for r in records.get(task.key, []) if record_seconds(r) < FAILED_RUN_SECS]
        best = record_seconds(valid[0]) if valid else None
        rows.append({
            "name": task.name, "kind": task.kind, "op": task.op, "space": task.space, "calls": task.calls,
            "untuned_schedule": untuned_label(task),
            "untuned_ms": None if base is None else base * 1e3,
            "tuned_ms": None if best is None else best * 1e3,
            "speedup": None if not (base and best) else base / best,
            "trials": len(records.get(task.key, [])),
            "failed_trials": len(records.get(task.key, [])) - len(valid),
            "key": task.key,
        })
    return {
        "model": os.path.basename(path),
        "target": spec.name,
        "measured_on": where,
        "database": os.path.abspath(db_dir),
        "trials_this_run": trials_run,
        "seconds_this_run": round(seconds, 1),
        "tasks": rows,
        "totals": {kind: totals([r for r in rows if r["kind"] == kind]) for kind in ("binary", "float")},
        "note": "times are per call; totals weight each task by its calls in the model; 'with database' "
                "uses a tuned schedule only where it beat the untuned one (what compile --db does)",
    }


def totals(rows: list[dict]) -> dict:
    measured = [r for r in rows if r["untuned_ms"] is not None]
    untuned = sum(r["calls"] * r["untuned_ms"] for r in measured)
    tuned = sum(r["calls"] * min(r["untuned_ms"], r["tuned_ms"] or float("inf")) for r in measured)
    return {"untuned_ms": untuned, "with_database_ms": tuned, "speedup": (untuned / tuned) if tuned else None,
            "tasks": len(rows)}


def report_lines(report: dict) -> list[str]:
    lines = [f"{'task':34s} {'kind':6s} {'calls':>5s} {'untuned ms':>11s} {'tuned ms':>9s} {'speedup':>8s} {'trials':>6s}"]
    for r in report["tasks"]:
        fmt = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"{r['name'][:34]:34s} {r['kind']:6s} {r['calls']:5d} {fmt(r['untuned_ms']):>11s} "
                     f"{fmt(r['tuned_ms']):>9s} {fmt(r['speedup'], '.2f'):>8s} {r['trials']:6d}")
    for kind, t in report["totals"].items():
        if t["tasks"]:
            lines.append(f"{kind} kernels in total: untuned {t['untuned_ms']:.3f} ms, with the database "
                         f"{t['with_database_ms']:.3f} ms per inference (x{t['speedup']:.2f})")
    return lines


def plot_report(report: dict, path: str) -> None:
    """Untuned vs tuned time per task (weighted by calls: the time the model spends there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["tasks"] if r["untuned_ms"] is not None]
    names = [f"{r['name']} x{r['calls']}" for r in rows]
    untuned = [r["calls"] * r["untuned_ms"] for r in rows]
    tuned = [r["calls"] * (r["tuned_ms"] if r["tuned_ms"] is not None else np.nan) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 2), 4.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, untuned, 0.4, label="untuned (hand-written / TVM default)")
    ax.bar(x + 0.2, tuned, 0.4, label="tuned (best record)")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ms per inference (time x calls)")
    ax.set_title(f"{report['model']} on {report['target']}: tuning ({sum(r['trials'] for r in rows)} trials)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
