"""The report: text lines and the plot."""

from __future__ import annotations
from bnn_tvm.targets.mca import report_lines as mca_lines
from ...atomic_files import atomic_write


def report_lines(report: dict) -> list[str]:
    threads = report["threads"]
    where = report["machine"].get("gpu") or report["machine"].get("cpu") or report["machine"].get("board")
    lines = [f"{report['model']} on {report['target']} ({where}), {threads} thread{'s' if threads != 1 else ''}"]
    lines.append(f"  {'engine':<16}{'median ms':>11}{'min ms':>10}{'runs':>6}{'bnn_tvm is':>14}  note")
    for name, r in report["engines"].items():
        if r.get("error"):
            lines.append(f"  {name:<16}{'-':>11}{'-':>10}{'-':>6}{'':>14}  {r['error']}")
            continue
        ratio = report["speedup"].get(name)
        faster = "" if name == "bnn_tvm" or ratio is None else (f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower")
        instr = f", {r['instructions']:,} instructions" if r.get("instructions") is not None else ""
        lines.append(f"  {name:<16}{r['median_ms']:>11.3f}{r['min_ms']:>10.3f}{r['runs']:>6}{faster:>14}  {r['note']}{instr}")
    ratios = {name: ratio for name, ratio in report.get("instruction_ratio", {}).items() if name != "bnn_tvm"}
    if ratios:
        lines.append("  executed instructions (one run, same board and plugin): bnn_tvm executes "
                     + ", ".join(f"{ratio:.1f}x fewer than {name}" if ratio >= 1 else f"{1 / ratio:.1f}x more than {name}"
                                 for name, ratio in ratios.items()))
    estimates = report["engines"].get("bnn_tvm", {}).get("mca")
    if estimates:
        lines += mca_lines(estimates) if "error" not in estimates else [f"  llvm-mca estimate failed: {estimates['error']}"]
    sizes = report["sizes"]
    size_text = f"  sizes: ONNX {sizes['onnx_bytes'] / 1024:.0f} KiB (fp32 parameters {sizes['fp32_parameter_bytes'] / 1024:.0f} KiB)"
    for engine in ("bnn_tvm", "tvm_fp32"):
        if f"{engine}_module_bytes" in sizes:
            size_text += f", {engine} module {sizes[f'{engine}_module_bytes'] / 1024:.0f} KiB"
    lines.append(size_text)
    for engine, diff in report.get("max_abs_diff_vs_reference", {}).items():
        lines.append(f"  {engine} output vs ONNX Runtime reference (optimisations off): max abs diff {diff:.3g}")
    if "popcount_limit" in report:
        p = report["popcount_limit"]
        lines.append(f"  binary MACs {report['binary_macs'] / 1e6:.1f} M: bnn_tvm {p['achieved_gmacs_per_s']:.0f} G/s = "
                     f"{100 * p['fraction']:.0f}% of the popcount limit {p['gmacs_per_s']:.0f} G/s ({p['method']})")
        ceilings = ", ".join(f"{ratio:.1f}x {name}" for name, ratio in p.get("speedup_at_limit", {}).items())
        if ceilings:
            lines.append(f"  a kernel at that limit ({p['limit_ms']:.3f} ms, popcounts only) would be at most: {ceilings}")
    return lines


def plot(reports: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 1, figsize=(8, 1.2 + 1.6 * len(reports)), squeeze=False)
    for ax, report in zip(axes[:, 0], reports):
        names = [n for n, r in report["engines"].items() if r.get("median_ms")]
        values = [report["engines"][n]["median_ms"] for n in names]
        bars = ax.barh(names, values, color=["tab:green" if n == "bnn_tvm" else "tab:gray" for n in names])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{report['model']} ({report['target']}, {report['threads']} thread(s))", fontsize=9)
        for bar, name in zip(bars, names):
            ratio = report["speedup"].get(name, 1.0)
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {bar.get_width():.3g} ms ({ratio:.1f}x)",
                    va="center", fontsize=8)
        ax.set_xlabel("median ms (log scale)")
    fig.tight_layout()

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
