"""llvm-mca cycle estimates of the binary kernels' inner loops (``targets.mca``): the parsing of
LLVM's assembly and of llvm-mca's output, and the reference layer (binary 3x3 conv 64->64,
56x56, batch 1) compiled for rasp3b (Cortex-A53). Compiling for aarch64 needs no cross compiler
(LLVM's own backend writes the assembly); only llvm-mca itself may be missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from bnn_tvm import targets
from bnn_tvm.devices.endpoint import Endpoint
from bnn_tvm.errors import BnnError
from bnn_tvm.targets import mca

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_LAYER = "conv3x3:64x56x56"

needs_mca = pytest.mark.skipif(
    not any(shutil.which(name) for name in mca.LLVM_MCA_NAMES),
    reason=f"llvm-mca missing: {mca.INSTALL_HINT}",
)

# One 4-lane popcount step as the aarch64 kernels write it, in LLVM's assembly style.
SMALL_LOOP = """\
\t.type\tkern_compute_,@function
kern_compute_:
\tmov\tx8, #16
\t.p2align\t4
.LBB0_1:                                // =>This Inner Loop Header: Depth=1
\t.loc\t1 12 3
\tld1r\t{ v1.4s }, [x1], #4
\tldr\tq2, [x2], #16
\teor\tv3.16b, v1.16b, v2.16b
\tcnt\tv3.16b, v3.16b
\tuaddlp\tv3.8h, v3.16b
\tuadalp\tv0.4s, v3.8h
\tsubs\tx8, x8, #1
\tb.ne\t.LBB0_1
\tstr\tq0, [x0]
\tret
"""

# llvm-mca 14's summary view, as it prints it (the rest of its report cut).
MCA_OUTPUT = """\
Iterations:        100
Instructions:      16400
Total Cycles:      19201
Total uOps:        16900

Dispatch Width:    2
uOps Per Cycle:    0.88
IPC:               0.85
Block RThroughput: 129.0
"""


def test_parse_summary_of_llvm_mca_output():
    summary = mca.parse_summary(MCA_OUTPUT)
    assert (summary.iterations, summary.instructions, summary.total_cycles) == (100, 16400, 19201)
    assert summary.block_rthroughput == 129.0 and summary.cycles_per_iteration == 192.01
    with pytest.raises(BnnError, match="Total Cycles"):
        mca.parse_summary("Iterations: 100\nInstructions: 800\n")


def test_loop_of_small_asm_is_found_and_its_popcount_bits_counted():
    [(label, block)] = mca.innermost_loops(mca.functions(SMALL_LOOP)["kern_compute_"])
    body = mca.instructions(block)
    assert label == ".LBB0_1"
    assert body[0].startswith("ld1r") and body[-1].startswith("b.ne") and len(body) == 8  # no label, .loc
    assert mca.popcount_bits(body) == 128


def test_popcount_bits_by_register_width():
    assert mca.popcount_bits(["eor v1.8b, v2.8b, v3.8b", "cnt v1.8b, v1.8b"]) == 64
    # a scalar popcount of one 32-bit word: fmov sN, wM zeroes the upper half
    assert mca.popcount_bits(["eor w8, w9, w10", "fmov s1, w8", "cnt v1.8b, v1.8b", "uaddlv h1, v1.8b"]) == 32
    assert mca.popcount_bits(["eor x8, x9, x10", "fmov d1, x8", "cnt v1.8b, v1.8b"]) == 64
    assert mca.popcount_bits(["cnt v0.16b, v0.16b", "cnt v1.16b, v2.16b", "add x0, x0, #1"]) == 256


def test_parallel_bodies_belong_to_the_kernel_that_launches_them():
    """``.L__tvm_parallel_lambda`` must not be taken for ``.L__tvm_parallel_lambda.7``."""
    asm = (
        "\t.type\ta_compute_,@function\na_compute_:\n\tadrp\tx0, .L__tvm_parallel_lambda.7\n"
        "\t.type\tb_compute_,@function\nb_compute_:\n\tadd\tx0, x0, :lo12:.L__tvm_parallel_lambda\n"
        "\t.type\t.L__tvm_parallel_lambda,@function\n.L__tvm_parallel_lambda:\n\tmov\tx1, #1\n"
        "\t.type\t.L__tvm_parallel_lambda.7,@function\n.L__tvm_parallel_lambda.7:\n\tmov\tx2, #2\n"
        "\t.type\t.L.str,@object\n"
    )
    code = mca.kernel_code(asm)
    assert set(code) == {"a", "b"}
    assert "mov\tx2" in code["a"] and "mov\tx1" not in code["a"]
    assert "mov\tx1" in code["b"] and "mov\tx2" not in code["b"]


def test_missing_llvm_mca_names_the_package(monkeypatch):
    monkeypatch.setattr(mca.shutil, "which", lambda name: None)
    with pytest.raises(BnnError, match="apt-get install llvm"):
        mca.llvm_mca()


def test_bench_count_instructions_without_llvm_mca_fails_before_the_board(monkeypatch, capsys):
    from bnn_tvm.cli import main

    monkeypatch.setattr(mca.shutil, "which", lambda name: None)
    # nothing listens at port 1: the llvm-mca check must come first
    assert main(["bench", "--layer", "conv3x3:8x4x4", "--target", "rasp3b", "--rpc", "127.0.0.1:1",
                 "--count-instructions"]) == 2
    assert "llvm-mca not found" in capsys.readouterr().err


def test_only_aarch64_targets_are_estimated():
    assert mca.target_cpu(targets.get("rasp3b")) == ("aarch64-linux-gnu", "cortex-a53", "+neon")
    for name in ("rasp3b-armv7", "x86-avx2"):
        with pytest.raises(BnnError, match=f"--target {name}: .*aarch64"):
            mca.target_cpu(targets.get(name))


@needs_mca
def test_llvm_mca_on_small_loop():
    body = "\n".join(mca.instructions(mca.innermost_loops(SMALL_LOOP)[0][1])) + "\n"
    summary = mca.run_mca(body, "cortex-a53")
    assert summary.iterations == mca.ITERATIONS and summary.instructions == 8 * mca.ITERATIONS
    # in order, two-wide: at least 4 cycles for 8 instructions, and the estimate is no faster
    # than the resource bound
    assert summary.cycles_per_iteration >= max(4.0, summary.block_rthroughput)
    with pytest.raises(BnnError, match="llvm-mca -mtriple=aarch64-linux-gnu -mcpu=no-such-cpu"):
        mca.run_mca(body, "no-such-cpu")


@pytest.fixture(scope="module")
def reference_rasp3b(tmp_path_factory):
    """The reference layer compiled for rasp3b (about 6 s)."""
    from bnn_tvm.measure.bench.layers import LayerSpec
    from bnn_tvm.measure.bench.workload import layer_workload
    from bnn_tvm.compilation.compiler import compile_onnx

    spec = LayerSpec.parse(REFERENCE_LAYER)
    path = layer_workload(spec, str(tmp_path_factory.mktemp("mca"))).onnx_path
    return spec, compile_onnx(path, "rasp3b", batch=1)


@needs_mca
def test_reference_layer_estimate_on_cortex_a53(reference_rasp3b):
    spec, compiled = reference_rasp3b
    estimates = mca.kernel_estimates(compiled.executable, targets.get("rasp3b"))
    assert estimates["mcpu"] == "cortex-a53" and "not measurements" in estimates["note"]
    [(kernel, loop)] = [(k, e) for k, e in estimates["kernels"].items() if "conv2d" in k]
    assert 0 < loop["mca_cycles_per_binary_mac"] < 1, loop
    assert loop["binary_macs_per_iteration"] % 128 == 0 and loop["mca_cycles_per_iteration"] > 0
    asm = mca.kernel_code(mca.module_asm(compiled.executable))[kernel]
    body = dict(mca.innermost_loops(asm))[loop["loop"]]
    assert "cnt\tv" in body and "eor\tv" in body
    lines = mca.report_lines(estimates)
    assert "ESTIMATES, not measurements" in lines[0]
    assert any(kernel in line and "estimated" in line and "cycles per binary MAC" in line for line in lines[1:])


@needs_mca
def test_bench_count_instructions_reports_the_estimates(reference_rasp3b, monkeypatch, tmp_path):
    """``bench --count-instructions`` on rasp3b: the estimates are made here, from the module's
    assembly, and land in the engine's JSON and the report (the board run itself is replaced)."""
    import numpy as np

    from bnn_tvm.measure.bench import engines
    from bnn_tvm.measure.bench.engines import bnn_engine, wants_mca
    from bnn_tvm.measure.bench.report import report_lines
    from bnn_tvm.measure.bench.workload import EngineResult, Prepared, Settings, Workload
    from bnn_tvm.compilation import compiler

    spec, compiled = reference_rasp3b
    monkeypatch.setattr(compiler, "compile_onnx", lambda *args, **kwargs: compiled)
    monkeypatch.setattr(engines, "run_compiled", lambda engine, *args: Prepared(
        EngineResult(engine, times_ms=[1.0], note="module", instructions=123)))
    workload = Workload(spec.name, "unused.onnx", spec.input_shape, layer=spec, binary_macs=spec.binary_macs)
    settings = Settings("rasp3b", endpoint=Endpoint(rpc="127.0.0.1:1"), count_instructions=True)
    result = bnn_engine(workload, np.zeros(spec.input_shape, np.float32), settings, str(tmp_path), {}).result
    engine_json = result.to_json()
    kernels = engine_json["mca"]["kernels"]
    assert kernels and all(0 < k["mca_cycles_per_binary_mac"] < 1 for k in kernels.values())
    report = {"model": spec.name, "target": "rasp3b", "threads": 1, "machine": {"board": "test"},
              "engines": {"bnn_tvm": engine_json}, "speedup": {}, "sizes": {"onnx_bytes": 0, "fp32_parameter_bytes": 0}}
    text = "\n".join(report_lines(report))
    assert "123 instructions" in text and "llvm-mca ESTIMATES, not measurements" in text
    assert not wants_mca(Settings("rasp3b", endpoint=Endpoint(rpc="127.0.0.1:1")))  # without --count-instructions


@needs_mca
def test_kernel_times_tool_prints_estimates_for_arm():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "kernel_times.py"), "--layer", "conv3x3:64x8x8", "--target", "rasp3b"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "ESTIMATES, not measurements" in done.stdout and "cycles per binary MAC" in done.stdout
    refused = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "kernel_times.py"), "--target", "rasp3b-armv7"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert refused.returncode == 2 and "aarch64" in refused.stderr
