"""Published BNN forms end to end: each form of ``tests/published_bnn.py`` as a CIFAR ResNet-20,
exported with both of PyTorch's exporters, through ``inspect``, ``verify`` and ``bench``.

    python tools/published_forms.py [--forms bireal,irnet] [--blocks 3] [--repeat 20] [--json F]

Prints, per form and exporter: binary convs / convs, verify's verdict and how many binarized
tensors it compared, and the medians of bnn_tvm and ONNX Runtime (1 thread, one run each,
alternating by form) with their ratio, and the same for the minimums (steadier on a loaded
machine). Exit 1 if any model does not verify.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from published_bnn import FORMS, export, resnet  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bnn_tvm.compilation.inspection import inspect_onnx  # noqa: E402
from bnn_tvm.compilation.verify import verify  # noqa: E402
from bnn_tvm.measure.bench.as_user import bench_as_user  # noqa: E402




def measure(form: str, dynamo: bool, folder: str, blocks: int, repeat: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(resnet(form, blocks), os.path.join(folder, f"{form}_{'dynamo' if dynamo else 'ts'}.onnx"), dynamo)
    convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    report = verify(path, "x86")
    timing = bench_as_user(path, repeat)
    engines = timing["engines"]
    return {
        "form": form, "exporter": "dynamo" if dynamo else "torchscript",
        "binary_convs": sum(r.binary for r in convs), "convs": len(convs),
        "verify_ok": report.ok, "binary_compared": report.binary_checked,
        "bnn_tvm_ms": engines["bnn_tvm"]["median_ms"], "ort_fp32_ms": engines["ort_fp32"]["median_ms"],
        "speedup_vs_ort": engines["ort_fp32"]["median_ms"] / engines["bnn_tvm"]["median_ms"],
        # minimums too: on a loaded machine the medians of two engines can see different loads
        "bnn_tvm_min_ms": engines["bnn_tvm"]["min_ms"], "ort_fp32_min_ms": engines["ort_fp32"]["min_ms"],
        "speedup_vs_ort_min": engines["ort_fp32"]["min_ms"] / engines["bnn_tvm"]["min_ms"],
        "machine": timing["machine"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", default=",".join(sorted(FORMS)), help="comma-separated subset of " + ", ".join(sorted(FORMS)))
    parser.add_argument("--blocks", type=int, default=3, help="block pairs per stage (3: ResNet-20)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    forms = args.forms.split(",")
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        parser.error(f"unknown form(s) {', '.join(unknown)}; known: {', '.join(sorted(FORMS))}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cases = [(form, dynamo) for form in forms for dynamo in (False, True)]
        for form, dynamo in tqdm(cases, desc="published forms", unit="model"):
            rows.append(measure(form, dynamo, folder, args.blocks, args.repeat))
    print(f"{'form':14} {'exporter':12} {'binary convs':>12} {'verify':>14} {'bnn_tvm ms':>10} {'ORT ms':>8} {'vs ORT':>7}"
          f" {'(minimums:':>10} {'bnn_tvm':>7} {'ORT':>6} {'vs ORT)':>7}")
    for r in rows:
        verdict = f"{'OK' if r['verify_ok'] else 'FAILED'} ({r['binary_compared']})"
        print(f"{r['form']:14} {r['exporter']:12} {r['binary_convs']:>5} / {r['convs']:<4} {verdict:>14} "
              f"{r['bnn_tvm_ms']:>10.3f} {r['ort_fp32_ms']:>8.3f} {r['speedup_vs_ort']:>6.1f}x"
              f" {'':>10} {r['bnn_tvm_min_ms']:>7.3f} {r['ort_fp32_min_ms']:>6.3f} {r['speedup_vs_ort_min']:>6.1f}x")
    if rows:
        print(f"machine: {rows[0]['machine']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0 if all(r["verify_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
