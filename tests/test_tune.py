"""Autotuning: binary-aware search spaces, a tuning run killed and resumed, its
database compiled, the database's tolerance of a killed writer, and tuning over RPC (slow).

The default run does one tiny tuning run (a few trials of the digits model's binary kernels,
first part in a process that is killed, the rest resumed in this one); everything else here is
schedule checks without measurements.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te
from bibert import BiAttention, export
from conftest import dense_case, dorefa, placeholder, ternary_dense_case
from onnx import helper
from onnx_builders import GraphBuilder, conv_block_model, quant_planes_graph, save

from bnn_tvm import schedules
from bnn_tvm import targets
from bnn_tvm.measure.bench.layers import LayerSpec
from bnn_tvm.measure.tune.compare import compare_model
from bnn_tvm.measure.tune.report import REPORT_FILE, plot_report, report_lines
from bnn_tvm.measure.tune.search import lock_database, tune
from bnn_tvm.cli import main
from bnn_tvm.compilation.compiler import compile_onnx, lower_onnx
from bnn_tvm.training.data import digits_split
from bnn_tvm.errors import BnnError
from bnn_tvm.frontend.export import default_model_path
from bnn_tvm.compilation.runtime import CompiledRunner
from bnn_tvm.devices.endpoint import Endpoint
from bnn_tvm.schedules import cpu, tuning

TINY_TRIALS = 6
RECORDS = os.path.join("{db}", tuning.RECORD_FILE)


# --------------------------------------------------------------------------------------------
# Search spaces: every design space, replayed with fresh random decisions, is exact


def float_conv_model(path, channels=32, size=6):
    """binarize -> padded binary conv with float output (``binary_conv2d``)."""
    g = GraphBuilder([1, channels, size, size], seed=3)
    out = g.conv(g.binarize("x"), g.binary_weight((channels, channels, 3, 3)), pad=1)
    return save(g.model([out]), path)


def dorefa_model(path, channels=32, size=8):
    """2-bit DoReFa planes into a conv with float output (``multibit_conv2d``) and into a conv
    whose batch norm and binarizer fold into thresholds (``multibit_conv2d_threshold``)."""
    g = GraphBuilder([1, channels, size, size], seed=5)
    planes = dorefa(g, "x", 2)
    out = g.conv(planes, g.binary_weight((channels, channels, 3, 3)), pad=1)
    y = g.batch_norm(g.conv(planes, g.binary_weight((channels, channels, 3, 3)), pad=1), *g.random_bn(channels, 0.3))
    folded = g.conv(g.binarize(y), g.binary_weight((8, channels, 1, 1)))
    return save(g.model([out, folded]), path)


def token_dense_model(path, tokens=7, features=48, hidden=40, out=12):
    """Two binary matmuls on ``[N, T, C]`` tokens: a dense over the rows with thresholds (the
    scale, bias and binarizer folded), then one with float output."""
    g = GraphBuilder([1, tokens, features], seed=11)
    g.input = helper.make_tensor_value_info("x", 1, ["N", tokens, features])
    h = g.node("MatMul", [g.binarize("x"), g.const(g.binary_weight((features, hidden)), "w")])
    h = g.node("Add", [g.node("Mul", [h, g.const(np.float32(0.25))]), g.const(g.rng.standard_normal(hidden).astype(np.float32))])
    return save(g.model([g.node("MatMul", [g.binarize(h), g.const(g.binary_weight((hidden, out)), "w")])]), path)


def attention_model(path, tokens: int, zero_bias: bool) -> str:
    """BiBERT's Bi-Attention (hidden 64, 2 heads): scores, bits and context kernels (ternary
    with zero biases); ``tokens`` 32 makes the bits' keys whole words."""
    return export(path, BiAttention(64, 2, outputs="all"), tokens, 64, zero_bias=zero_bias)


def dense_case_kernels():
    """``(name, op, PrimFunc)`` of dense kernels over several rows: binary and ternary, float or
    packed output, word-aligned or not, an odd output count, ternary weights."""
    rng = np.random.default_rng(0)
    cases = {"dense": dense_case(rng, 3, 200, 48, False), "threshold": dense_case(rng, 5, 100, 64, True),
             "unaligned": dense_case(rng, 4, 100, 40, True), "odd": dense_case(rng, 7, 33, 13, False),
             "ternary": ternary_dense_case(rng, 4, 96, 40), "ternary_threshold": ternary_dense_case(rng, 6, 96, 64, True),
             "ternary_weights": ternary_dense_case(rng, 4, 96, 40, True, ternary_weights=True)}
    for name, (op, attrs, inputs, compute, _) in cases.items():
        tensors = [placeholder(array, f"arg{i}") for i, array in enumerate(inputs)]
        yield name, op, te.create_prim_func(tensors + [compute(*tensors)]).with_attrs({"bnn.op": op, **attrs})


def kernel_inputs(func, rng) -> list[np.ndarray]:
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    arrays = []
    for info in ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        if dtype == "uint32":
            arrays.append(rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(dtype))
        elif dtype == "int32":
            arrays.append(rng.integers(-400, 400, size=shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    if cpu.kernel_op(func).startswith("binary_conv2d"):  # border class indices into the correction table
        arrays[3] = rng.integers(0, arrays[2].shape[0], size=arrays[3].shape).astype("int32")
        arrays[4] = rng.integers(0, arrays[2].shape[1], size=arrays[4].shape).astype("int32")
    return arrays


def run_kernel(func, arrays) -> np.ndarray:
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), targets.get("x86").tvm_target())
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def replay_fresh(design, func):
    """The design space's trace replayed on a fresh copy with every sampling decision redrawn."""
    import tvm

    sch = tvm.s_tir.Schedule(tuning.workload(func))
    design.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=lambda *_: None)
    return sch.mod["main"]


@pytest.mark.parametrize("model,target", [("float_conv", "x86"), ("threshold_conv", "x86"), ("dorefa", "x86"),
                                          ("quant", "x86"), ("digits", "x86"), ("float_conv", "x86-avx2"), ("threshold_conv", "x86-avx2"),
                                          ("tokens", "x86"), ("tokens", "x86-avx2"), ("attention", "x86"),
                                          ("both_ternary", "x86"), ("both_ternary", "x86-avx2"),
                                          ("ttq", "x86"), ("ttq", "x86-avx2")])
def test_design_spaces_are_exact_under_random_decisions(model, target, tmp_path):
    """Every fifth design (the knobs vary fastest to slowest: counters, padding, parallel
    loops, ...) with its sampled decisions redrawn, against the unscheduled kernel; AVX2 (byte
    or 32-bit counters) on any host, the host's own unit too."""
    if model == "float_conv":
        path = float_conv_model(tmp_path / "m.onnx")
    elif model == "dorefa":
        path = dorefa_model(tmp_path / "m.onnx")
    elif model == "quant":
        path = save(quant_planes_graph(), tmp_path / "m.onnx")
    elif model == "threshold_conv":
        path = save(conv_block_model(32, 64, 6, stride=2)[0], tmp_path / "m.onnx")
    elif model == "tokens":
        path = token_dense_model(tmp_path / "m.onnx")
    elif model == "attention":
        path = attention_model(tmp_path / "m.onnx", 32, False)
    elif model == "both_ternary":  # the multiply-add step (AVX-512 VNNI) and the nibble lookups (AVX2)
        path = save(LayerSpec.parse("conv3x3:64x8x8,input=ternary,weights=ternary").onnx_model(), tmp_path / "m.onnx")
    elif model == "ttq":
        # over 16 channels: no position pairs, whose words must leave their upper halves 0 (random words do not)
        path = save(LayerSpec.parse("conv3x3:24x6x6,input=ternary,weights=ttq,pad=1").onnx_model(), tmp_path / "m.onnx")
    else:
        path = default_model_path()
    spec = targets.get(target)
    mod = tuning.prepare_module(lower_onnx(path).mod, spec)
    rng = np.random.default_rng(0)
    checked = {}
    for gvar, func, op in schedules.bnn_kernels(mod):
        spaces = tuning.design_spaces(func, op, spec)
        if spaces is None:
            continue
        arrays = kernel_inputs(func, rng)
        reference = run_kernel(func, arrays)
        for design in spaces[::5]:  # a spread of the structural knobs (pad alternates, then parallel, ...)
            tuned = tuning.tuned_kernel(func, replay_fresh(design, func), op, gvar.name_hint)
            moved = list(arrays)
            for position, axes in tuned.relayouts.items():
                moved[position] = np.ascontiguousarray(moved[position].transpose(axes))
            assert np.array_equal(run_kernel(tuned.func, moved), reference), f"{gvar.name_hint}: {design.trace}"
        checked[op] = checked.get(op, 0) + len(spaces[::5])
    expected = {"float_conv": ["binary_conv2d"], "threshold_conv": ["binary_conv2d_threshold"],
                "dorefa": ["multibit_conv2d", "multibit_conv2d_threshold"],
                "quant": ["multibit_conv2d", "multibit_conv2d_threshold"], "digits": ["pack_sign", "binary_dense_epilogue"],
                "tokens": ["binary_dense", "binary_dense_threshold"],
                "attention": ["binary_attention_scores", "binary_attention_bits", "binary_attention_context"],
                "both_ternary": ["ternary_conv2d"],
                "ttq": ["ternary_conv2d_ttq"]}[model]
    assert all(checked.get(op, 0) >= 1 for op in expected), checked


def hand_and_default_kernels(path, spec):
    """``(name, op, hand-scheduled PrimFunc, the first design of its space at its own decisions)``
    of every kernel of ``path`` that has a rule."""
    unit = tuning.vector_unit(spec)
    mod = schedules.prepare_cpu_kernels(lower_onnx(path, 1, target=spec.name).mod, spec)
    for gvar, func, op in schedules.bnn_kernels(mod):
        spaces = tuning.design_spaces(func, op, spec)
        if spaces is not None:
            yield gvar.name_hint, op, cpu.schedule_kernel(func, op, unit).func, spaces[0].mod["main"]


def without_names(func):
    return func.without_attr("global_symbol").without_attr("tirx.noalias")


@pytest.mark.parametrize("target", ["x86", "x86-avx2", "rasp3b", "rasp3b-armv7"])
def test_default_decisions_reproduce_the_hand_schedules(target, tmp_path):
    """A tuned record and the hand schedule are two settings of one rule: the first design of a
    kernel's space, at its own decisions, is the hand-scheduled IR (AVX-512 and AVX2 byte
    counters, NEON halfword counters on aarch64 and armv7): binary, ternary and k-bit convs with
    float or packed outputs, word-aligned or not, padded, strided, odd channel counts, packs;
    binary and ternary denses over rows (float, epilogue or packed output), Bi-Attention's
    scores, bits and context."""

    paths = [default_model_path(), float_conv_model(tmp_path / "float.onnx"), dorefa_model(tmp_path / "dorefa.onnx"),
             save(conv_block_model(32, 64, 6, stride=2)[0], tmp_path / "aligned.onnx"),
             save(conv_block_model(24, 40, 7)[0], tmp_path / "unaligned.onnx")]
    for k, text in enumerate(["conv3x3:16x8x8,input=ternary,weights=ternary,pad=1", "conv3x3:13x9x9,out=7,stride=2,pad=1",
                              "conv3x3:16x8x8,input=ternary,weights=ttq,pad=1", "conv3x3:24x6x6,out=24,weights=ttq,pad=1"]):
        paths.append(save(LayerSpec.parse(text).onnx_model(), tmp_path / f"layer{k}.onnx"))
    paths += [token_dense_model(tmp_path / "tokens.onnx"), attention_model(tmp_path / "bits.onnx", 32, False),
              attention_model(tmp_path / "ternary_attention.onnx", 16, True)]
    spec = targets.get(target)
    seen = set()
    for path in paths:
        for name, op, hand, default in hand_and_default_kernels(str(path), spec):
            assert tvm_ffi.structural_equal(without_names(default), without_names(hand)), f"{path}: {name}"
            seen.add(op)
    unit = tuning.vector_unit(spec)
    for name, op, func in dense_case_kernels():
        hand = cpu.schedule_kernel(func, op, unit)
        assert "generic" not in hand.plan, hand.plan
        default = tuning.design_spaces(func, op, spec)[0].mod["main"]
        assert tvm_ffi.structural_equal(without_names(default), without_names(hand.func)), name
        seen.add(op)
    assert {"binary_conv2d", "binary_conv2d_threshold", "multibit_conv2d", "multibit_conv2d_threshold",
            "ternary_conv2d", "ternary_conv2d_ttq", "binary_conv2d_ttq", "pack_sign", "pack_ternary", "binary_dense", "binary_dense_epilogue",
            "binary_dense_threshold", "ternary_dense", "ternary_dense_threshold", "binary_attention_scores",
            "binary_attention_bits", "binary_attention_context", "ternary_attention_scores", "ternary_attention_bits",
            "ternary_attention_context"} <= seen, seen


def test_space_knobs_cover_the_old_space():
    """The structural knobs a ResNet layer's space enumerates: both lane widths, padding in its own
    pass or per task, every parallel nesting; AVX2's byte or 32-bit counters; the hand choices
    first."""
    path = save(conv_block_model(64, 64, 8, stride=1)[0], tempfile.mktemp(suffix=".onnx"))
    mod = schedules.prepare_cpu_kernels(lower_onnx(path, 1).mod, targets.get("x86"))
    func = next(f for _, f, op in schedules.bnn_kernels(mod) if op == "binary_conv2d_threshold")
    unit = tuning.vector_unit(targets.get("x86"))
    sch = tvm.s_tir.Schedule(func)
    choices = cpu.conv_choices(sch, func, unit, threshold=True)
    assert {k.pad for k in choices} == {"root", "task"} and {k.parallel for k in choices} == {1, 2, 3}
    assert {k.lanes for k in choices} == {unit.lanes, unit.lanes // 2} and all(k.words == 1 for k in choices)
    avx2 = tuning.vector_unit(targets.get("x86-avx2"))
    assert {k.counters for k in cpu.conv_choices(sch, func, avx2, threshold=True)} == {"bytes", "words"}
    hand = cpu.conv_knobs(sch, func, unit, threshold=True)
    assert hand.words is None and not hand.unroll


def test_dense_space_knobs():
    """A dense's space: both lane widths, the task loop parallel or serial, AVX2's byte or 32-bit
    counters, the hand choices first; the rows drawn by a perfect tile and a float dense's
    output block by a categorical choice, both defaulting to the hand tile."""
    kernels = {name: (op, func) for name, op, func in dense_case_kernels()}
    unit, avx2 = tuning.vector_unit(targets.get("x86")), tuning.vector_unit(targets.get("x86-avx2"))
    op, func = kernels["threshold"]
    sch = tvm.s_tir.Schedule(func)
    choices = cpu.row_choices(sch, func, unit, threshold=True)
    assert {k.lanes for k in choices} == {unit.lanes, unit.lanes // 2} and {k.parallel for k in choices} == {0, 1}
    assert all(k.out_block == cpu.WORD_BITS for k in choices)  # a word-aligned tile is one word
    assert {k.counters for k in cpu.row_choices(sch, func, avx2, threshold=True)} == {"bytes", "words"}
    hand = cpu.row_knobs(sch, func, unit, threshold=True)
    assert (hand.row_block, hand.out_block, hand.counters) == (5, 32, "words")
    op, func = kernels["dense"]
    (design, *_) = tuning.design_spaces(func, op, targets.get("x86"))
    decisions = {inst.kind.name: design.trace.decisions[inst] for inst in design.trace.insts if inst in design.trace.decisions}
    assert [int(d) for d in decisions["SamplePerfectTile"]] == [1, 3]  # 3 rows, one tile
    assert "SampleCategorical" in decisions


def test_space_traces_are_tunable_by_metaschedule():
    """Design spaces have sampling instructions the evolutionary search mutates, and the choice
    mutator redraws a sampled channel block into a trace that replays."""
    spec = targets.get("x86")
    mod = tuning.prepare_module(lower_onnx(default_model_path()).mod, spec)
    for _, func, op in schedules.bnn_kernels(mod):
        spaces = tuning.design_spaces(func, op, spec)
        if spaces is None:
            assert tuning.space_generator(func, op, spec) == "post-order-apply"
            continue
        kinds = {inst.kind.name for design in spaces for inst in design.trace.insts}
        assert "SamplePerfectTile" in kinds, op
    func = tuning.prepare_module(lower_onnx(float_conv_model(tempfile.mktemp(suffix=".onnx"))).mod, spec)
    func = next(f for _, f, op in schedules.bnn_kernels(func) if op == "binary_conv2d")
    design = tuning.design_spaces(func, "binary_conv2d", spec)[0]
    (choice,) = [inst for inst in design.trace.insts if inst.kind.name == "SampleCategorical"]
    mutated = tuning.mutate_choice().apply(design.trace)
    assert int(mutated.decisions[choice]) != int(design.trace.decisions[choice])
    sch = tvm.s_tir.Schedule(tuning.workload(func))
    mutated.apply_to_schedule(sch, remove_postproc=True)
    assert not tvm_ffi.structural_equal(sch.mod, design.mod)


# --------------------------------------------------------------------------------------------
# A tiny tuning run: killed midway, resumed, compiled


def record_lines(db: str) -> list[str]:
    path = RECORDS.format(db=db)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split("\n")


def complete_records(db: str) -> list[str]:
    lines = [line for line in record_lines(db) if line]
    good = []
    for line in lines:
        try:
            json.loads(line)
            good.append(line)
        except ValueError:
            pass
    return good


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    """Start a tiny tune as a process, kill it (whole process group) once its first records are
    written, then run the same command again here to completion."""
    db = str(tmp_path_factory.mktemp("tune") / "db")
    command = [sys.executable, "-m", "bnn_tvm", "tune", "--tasks", "binary", "--trials", str(TINY_TRIALS),
               "--db", db, "--timeout", "90"]
    killed_tmp = str(tmp_path_factory.mktemp("killed_tmp"))  # what SIGKILL leaves behind stays here
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TMPDIR": killed_tmp})
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(complete_records(db)) < 2:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    output = proc.stdout.read().decode(errors="replace")
    before = complete_records(db)
    assert before, f"the killed run wrote no record:\n{output}"
    killed_early = len(before) < TINY_TRIALS
    artifacts = str(tmp_path_factory.mktemp("tune_tmp"))
    saved, tempfile.tempdir = tempfile.tempdir, artifacts
    try:
        assert main(command[3:]) == 0  # the same arguments, in this process
    finally:
        tempfile.tempdir = saved
    # the candidates' libraries were built under a folder of the run, and it is gone
    assert os.listdir(artifacts) == []
    return {"db": db, "before": before, "killed_early": killed_early}


def test_killed_run_resumes_without_losing_records(tuned_db):
    before, after = tuned_db["before"], complete_records(tuned_db["db"])
    assert tuned_db["killed_early"], "the first run finished before it could be killed"
    assert len(after) == TINY_TRIALS > len(before)
    assert after[: len(before)] == before  # nothing lost, nothing rewritten
    assert all(line for line in record_lines(tuned_db["db"])[:-1])  # no broken line left in the file
    report = json.load(open(os.path.join(tuned_db["db"], REPORT_FILE)))
    assert sum(r["trials"] for r in report["tasks"]) == TINY_TRIALS
    assert report["trials_this_run"] == TINY_TRIALS - len(before)
    assert all(r["untuned_ms"] and r["untuned_ms"] > 0 for r in report["tasks"])
    assert any(r["tuned_ms"] for r in report["tasks"])


def test_rerun_with_the_same_trials_does_nothing(tuned_db, capsys):
    assert main(["tune", "--tasks", "binary", "--trials", str(TINY_TRIALS), "--db", tuned_db["db"]]) == 0
    assert "0 trial(s) to go" in capsys.readouterr().out
    assert len(complete_records(tuned_db["db"])) == TINY_TRIALS


def test_time_limit_stops_the_search_and_reports_what_ran(tuned_db, tmp_path, capsys):
    """``--minutes``: the search ends at the limit, short of ``--trials``; the records so far are
    kept and the report counts those this run added, not those it was asked for."""
    db = str(tmp_path / "db")
    shutil.copytree(tuned_db["db"], db)
    stored = len(complete_records(db))
    asked = stored + 500
    assert main(["tune", "--tasks", "binary", "--trials", str(asked), "--minutes", "0.05", "--db", db]) == 0
    assert "time limit of 0.05 min reached" in "".join(capsys.readouterr())
    added = len(complete_records(db)) - stored
    assert 0 < added < 500
    report = json.load(open(os.path.join(db, REPORT_FILE)))
    assert report["trials_this_run"] == added


def database_with_untuned_seconds(tuned_db, tmp_path, seconds: float) -> str:
    """A copy of the tiny run's database whose hand-written schedules took ``seconds``."""
    db = str(tmp_path / "db")
    shutil.copytree(tuned_db["db"], db)
    path = os.path.join(db, tuning.UNTUNED_FILE)
    untuned = json.load(open(path))
    for entries in untuned.values():
        for entry in entries.values():
            entry["seconds"] = seconds
    json.dump(untuned, open(path, "w"))
    return db


def test_database_compiles_exactly(tuned_db, tmp_path):
    """Every binary kernel with a record takes its tuned schedule (the hand-written ones are made
    to look slow, so the tiny run's records all apply), and the outputs stay bit-identical."""
    db = database_with_untuned_seconds(tuned_db, tmp_path, 1e3)
    path = default_model_path()
    extra = lower_onnx(path).binarizer_outputs()
    applied = {}
    spec = targets.get("x86")
    mod = tuning.apply_database(lower_onnx(path, 1).mod, db, spec, applied)
    tuned_kernels = [f for _, f in mod.functions_items() if f.attrs is not None and tuning.SCHEDULED_ATTR in f.attrs]
    assert len(tuned_kernels) == len(applied) > 0
    assert all("bnn.op" not in f.attrs and tuning.TUNED_OP_ATTR in f.attrs for f in tuned_kernels)
    x = digits_split()[2][:40]
    plain = CompiledRunner(compile_onnx(path, "x86", batch=1, extra_outputs=extra).executable).run(x)
    tuned = CompiledRunner(compile_onnx(path, "x86", batch=1, extra_outputs=extra, db=db).executable).run(x)
    assert len(tuned) == 1 + len(extra)
    for ours, theirs in zip(tuned, plain):  # logits and every binary activation
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    out = tmp_path / "digits_tuned.so"
    assert main(["compile", "--target", "x86", "--db", db, "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_slower_records_are_not_applied(tuned_db, tmp_path):
    db = database_with_untuned_seconds(tuned_db, tmp_path, 1e-12)  # hand-written beats every record
    applied = {}
    tuning.apply_database(lower_onnx(default_model_path(), 1).mod, db, targets.get("x86"), applied)
    assert applied == {}


def test_report_plot(tuned_db, tmp_path):
    report = json.load(open(os.path.join(tuned_db["db"], REPORT_FILE)))
    out = tmp_path / "tuning.png"
    plot_report(report, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = report_lines(report)
    assert lines[0].split()[:2] == ["task", "kind"] and "binary kernels in total" in lines[-1]


def test_compare_profiles_both_builds(tuned_db):
    result = compare_model(default_model_path(), "x86", tuned_db["db"], batch=1, rounds=3)
    for build in ("untuned", "tuned"):
        # binary_ms is timed around each kernel call from Python, model_ms without that overhead:
        # on the tiny default model they are not comparable, only both non-zero (kernels found).
        assert result[build]["binary_ms"] > 0 and result[build]["model_ms"] > 0
    assert result["binary_speedup"] > 0 and result["rounds"] == 3
    limit = result["popcount_limit"]
    assert limit["binary_macs"] > 0 and limit["gmacs_per_s"] > 0  # the default model's binary dense layers
    assert limit["limit_ms"] == pytest.approx(limit["binary_macs"] / limit["gmacs_per_s"] / 1e6)
    assert limit["binary_speedup_at_limit"] == pytest.approx(result["untuned"]["binary_ms"] / limit["limit_ms"])


# --------------------------------------------------------------------------------------------
# The database file written by a killed process


def test_truncated_last_line_is_skipped_with_a_warning(tuned_db, tmp_path):
    db = str(tmp_path / "db")
    shutil.copytree(tuned_db["db"], db)
    records = RECORDS.format(db=db)
    text = open(records).read()
    open(records, "w").write(text[: len(text) - 200])  # killed in the middle of the last line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_only = tuning.open_database(db, writable=False)
    assert len(read_only.get_all_tuning_records()) == TINY_TRIALS - 1
    assert any("truncated last line" in str(w.message) for w in caught)
    assert open(records).read() == text[: len(text) - 200]  # compile leaves the file alone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writable = tuning.open_database(db, writable=True)  # tune repairs it before appending
    assert len(writable) == TINY_TRIALS - 1
    assert all(json.loads(line) for line in open(records).read().split("\n") if line)


def test_broken_workload_line_in_the_middle_is_an_error(tuned_db, tmp_path):
    db = str(tmp_path / "db")
    shutil.copytree(tuned_db["db"], db)
    workloads = os.path.join(db, tuning.WORKLOAD_FILE)
    lines = open(workloads).read().split("\n")
    lines[0] = lines[0][:50]
    open(workloads, "w").write("\n".join(lines))
    if len([line for line in lines if line]) < 2:
        pytest.skip("a single workload: its broken line is the last one")
    with pytest.raises(BnnError, match="line 1 is not JSON"):
        tuning.open_database(db, writable=False)


# --------------------------------------------------------------------------------------------
# Errors


def test_second_run_on_a_locked_database_is_refused(tmp_path):
    lock = lock_database(str(tmp_path / "db"))
    try:
        with pytest.raises(BnnError, match="another tuning run is using this database"):
            tune(db_dir=str(tmp_path / "db"), trials=0)
    finally:
        lock.close()


def test_bad_requests_are_refused_clearly(tmp_path):
    with pytest.raises(BnnError, match="tuning supports CPU targets"):
        tune(target="cuda", db_dir=str(tmp_path / "db"))
    with pytest.raises(BnnError, match="runs on another machine: give --tracker"):
        tune(target="rasp3b", db_dir=str(tmp_path / "db"))
    with pytest.raises(BnnError, match="--rpc and --tracker: give one of them"):
        tune(target="rasp3b", endpoint=Endpoint(rpc="127.0.0.1:1", tracker="127.0.0.1:2"), db_dir=str(tmp_path / "db"))
    with pytest.raises(BnnError, match="neither a file nor a zoo model"):
        tune("no_such_model", db_dir=str(tmp_path / "db"))
    with pytest.raises(BnnError, match="no tuning database there"):
        compile_onnx(default_model_path(), "x86", db=str(tmp_path / "nothing"))


# --------------------------------------------------------------------------------------------
# Slow: tuning over RPC on the emulated board


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-aarch64") is None, reason="qemu-aarch64 missing: run tools/install_system_deps.sh")
def test_tuning_over_rpc_on_the_emulated_board_compiles(tmp_path):
    import socket

    from bnn_tvm.devices import board, tracker

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    board.ensure_root(progress=False)
    tracker_state = tracker.start("127.0.0.1", free_port())
    key = f"rasp3b-tune{os.getpid()}"
    try:
        state = board.start("rasp3b", port=free_port(), tracker=tracker_state.address, key=key, progress=False)
        db = str(tmp_path / "db")
        result = tune(None, "rasp3b", trials=4, db_dir=db, endpoint=state.endpoint, kinds=("binary",), timeout=300,
                      progress=False)
        assert result.report["measured_on"] == f"key {key!r} of tracker {tracker_state.address}"
        rows = result.report["tasks"]
        assert sum(r["trials"] for r in rows) == 4 and all(r["untuned_ms"] for r in rows)
        assert any(r["tuned_ms"] for r in rows)
        records = [json.loads(line) for line in open(RECORDS.format(db=db)) if line.strip()]
        assert all(r[1][2]["mtriple"] == "aarch64-linux-gnu" for r in records)
        compiled = compile_onnx(default_model_path(), "rasp3b", batch=1, db=db)
        out = tmp_path / "digits_rasp3b.so"
        compiled.export(str(out))
        assert out.read_bytes()[18] == 183  # ELF e_machine: AArch64
    finally:
        board.stop(key) if any(s.name == key for s in board.running()) else None
        tracker.stop(tracker_state.port)


def test_direct_rpc_tuning_session_brings_the_key():
    """``tune --rpc HOST:PORT --key KEY``: the runner's direct session brings ``--key``, as
    ``bench`` and ``verify`` do; without it a server that answers only to a random key (what
    ``board start --host 0.0.0.0`` picks) is refused, naming the key mismatch."""
    from tvm import rpc

    from bnn_tvm.measure.tune.measurer import connect_direct, make_measurer

    key = "rasp3b-0123456789abcdef"
    server = rpc.Server(host="127.0.0.1", port=9300, port_end=9400, key=key)
    address = f"127.0.0.1:{server.port}"
    measurer = None
    try:
        with pytest.raises(Exception, match="matches key"):
            connect_direct(Endpoint(rpc=address), "rasp3b", 10, None)
        measurer = make_measurer(targets.get("rasp3b"), 10, Endpoint(rpc=address, key=key))
        assert measurer.where == f"RPC server {address}"
        session = measurer.runner.f_create_session(measurer.runner.rpc_config)
        assert session.cpu(0).exist
    finally:
        if measurer is not None:
            measurer.close()
        server.terminate()
