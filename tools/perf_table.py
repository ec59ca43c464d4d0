#!/usr/bin/env python3
"""Markdown performance table for the README from ``python -m bnn_tvm bench --json`` files.

    python tools/perf_table.py layer.json resnet18_1t.json resnet18_2t.json > perf.md
    python tools/perf_table.py *.json --readme docs/performance.md   # replace the block between
                                                           # <!-- perf-table --> markers

Each row is one benchmarked model or layer (a JSON with ``"layers"`` gives one row per layer):
median milliseconds per engine, how many times slower each float engine is than the compiled
binary model, the fraction of the popcount limit reached when measured, the thread count and the
batch size.
The machine each file was measured on is named above the table (one line per machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

ENGINES = ("bnn_tvm", "tvm_fp32", "torch_fp32", "ort_fp32", "topi_bitserial")
MARKER_START, MARKER_END = "<!-- perf-table -->", "<!-- /perf-table -->"


def reports(path: str) -> list[dict]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {path}: not a bench JSON file ({err})")
    found = data["layers"] if "layers" in data else [data]
    for report in found:
        if "engines" not in report or "bnn_tvm" not in report["engines"]:
            raise SystemExit(f"error: {path}: no 'engines.bnn_tvm' entry; write it with `bench --json`")
    return found


def machine_line(report: dict) -> str:
    m = report.get("machine", {})
    if "board" in m:
        return f"{report['target']} board reached at {m['board']}"
    parts = [m["gpu"]] if m.get("gpu") else []
    parts.append(f"host {m.get('cpu', 'unknown CPU')}" if parts else m.get("cpu", "unknown CPU"))
    if m.get("cores"):
        parts.append(f"{m['cores']} cores")
    if m.get("llvm_cpu"):
        parts.append(f"LLVM cpu `{m['llvm_cpu']}`")
    return f"{', '.join(parts)} (target `{report['target']}`)"


def cell_ms(engine: dict | None) -> str:
    if not engine or engine.get("median_ms") is None:
        return "n/a"
    text = f"{engine['median_ms']:.3g}"
    if engine.get("instructions") is not None:
        text += f" ({engine['instructions'] / 1e6:.1f} M instr.)"
    return text


def table(all_reports: list[dict]) -> str:
    engines = [e for e in ENGINES if any(e in r["engines"] and r["engines"][e].get("median_ms") for r in all_reports)]
    others = [e for e in engines if e != "bnn_tvm"]
    header = ["model", "target", "threads", "batch"] + [f"{e} ms" for e in engines] + [f"vs {e}" for e in others] + ["popcount limit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in all_reports:
        speed = r.get("speedup", {})
        limit = r.get("popcount_limit")
        row = [f"`{r['model']}`", r["target"], str(r["threads"]), str(r.get("input_shape", ["n/a"])[0])]
        row += [cell_ms(r["engines"].get(e)) for e in engines]
        row += [f"{speed[e]:.1f}x" if e in speed else "n/a" for e in others]
        row.append(f"{100 * limit['fraction']:.0f}% of {limit['gmacs_per_s']:.0f} G/s" if limit else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    machines = sorted({machine_line(r) for r in all_reports})
    preface = [f"Measured on {m}." for m in machines]
    preface.append("Median milliseconds per run; `vs X` is how many times longer engine X takes than `bnn_tvm`; "
                   "the popcount limit is the measured XOR+POPCOUNT+ADD throughput of the same cores.")
    return "\n".join(preface) + "\n\n" + "\n".join(lines) + "\n"


def replace_block(readme: str, block: str) -> str:
    pattern = re.compile(re.escape(MARKER_START) + r".*?" + re.escape(MARKER_END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"error: no {MARKER_START} ... {MARKER_END} block in the README")
    return pattern.sub(lambda _: f"{MARKER_START}\n{block}{MARKER_END}", readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="bench --json outputs")
    parser.add_argument("-o", "--output", help="write the table here instead of stdout")
    parser.add_argument("--readme", help="replace the marked block of this README in place")
    args = parser.parse_args(argv)
    block = table([r for path in args.json for r in reports(path)])
    if args.readme:
        with open(args.readme) as handle:
            text = replace_block(handle.read(), block)
        tmp = args.readme + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, args.readme)
    elif args.output:
        with open(args.output, "w") as handle:
            handle.write(block)
    else:
        sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
