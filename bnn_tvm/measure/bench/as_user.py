"""``bench`` run as a user runs it: its own process, its JSON report read back (the tools that
compare whole models against ONNX Runtime time each one this way, so that no module of another
model shares the process)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile


def bench_as_user(path: str, repeat: int, target: str = "x86", engines: str = "bnn_tvm,ort_fp32") -> dict:
    """``python -m bnn_tvm bench PATH --target TARGET --threads 1 --engines ENGINES --repeat REPEAT``'s
    JSON report."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "bnn_tvm", "bench", path, "--target", target, "--threads", "1",
                        "--engines", engines, "--repeat", str(repeat), "--json", out.name],
                       check=True, capture_output=True)
        with open(out.name) as report:
            return json.load(report)
