"""verify's per-layer check: every compiled kernel run on ONNX Runtime's values of its inputs, so
that float rounding upstream of a binarizer is told apart from a compiler error.

The model reproduces how real models fail end to end: a downsampling shortcut (an average pool,
which TVM sums in another order than ONNX Runtime, and a 1x1 float conv) feeds a binarizer, one
of whose inputs sits on its threshold in ONNX Runtime and one ulp below it in the compiled model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_builders import GraphBuilder, save

from bnn_tvm.cli import main
from bnn_tvm.compilation.compiler import compile_onnx
from bnn_tvm.compilation.runtime import CompiledRunner
from bnn_tvm.compilation.reference import reference_outputs
from bnn_tvm.compilation.verify import verify

SHAPE = [1, 8, 8, 8]


def shortcut_model(path, threshold: float, probe: bool = False) -> str:
    """avg pool 3x3 -> 1x1 float conv (+ bias) -> minus ``threshold`` -> binarizer -> binary conv,
    batch norm -> binarizer -> binary conv; ``probe``: only the float part, its output exposed."""
    g = GraphBuilder(SHAPE, seed=7)
    rng = np.random.default_rng(7)
    pooled = g.node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    shortcut = g.conv(pooled, rng.standard_normal((16, 8, 1, 1)).astype(np.float32),
                      bias=rng.standard_normal(16).astype(np.float32))
    if probe:
        return save(g.model([shortcut]), path)
    bits = g.binarize(g.node("Sub", [shortcut, g.const(np.float32(threshold))]))
    hidden = g.binarize(g.batch_norm(g.conv(bits, g.binary_weight((16, 16, 3, 3)), pad=1), *g.random_bn(16)))
    return save(g.model([g.conv(hidden, g.binary_weight((8, 16, 3, 3)), pad=1)]), path)


def inputs(batch=4):
    return np.random.default_rng(8).standard_normal((batch, *SHAPE[1:])).astype(np.float32)


@pytest.fixture(scope="module")
def near_tie_model(tmp_path_factory):
    """The model with its binarizer's threshold at a value of the shortcut that the compiled
    model computes one ulp lower than ONNX Runtime: a near-tie decided by float rounding."""
    folder = tmp_path_factory.mktemp("per_layer")
    probe = shortcut_model(folder / "probe.onnx", 0.0, probe=True)
    x = inputs()
    ours = CompiledRunner(compile_onnx(probe, "x86").executable).run(x)[0]
    theirs = reference_outputs(onnx.load(probe), x, "x")[0]
    lower = np.flatnonzero(ours < theirs)
    if not lower.size:
        pytest.skip("the average pool rounds as ONNX Runtime's on this machine: no near-tie to build")
    return shortcut_model(folder / "model.onnx", float(theirs.reshape(-1)[lower[0]])), x


def test_float_rounding_upstream_fails_end_to_end_but_verifies_per_layer(near_tie_model):
    path, x = near_tie_model
    report = verify(path, "x86", x=x)
    lines = "\n".join(report.lines())
    assert not report.exact and report.binary_mismatches, lines  # end to end the flip spreads
    first, *later = report.binary_mismatches
    assert report.end_to_end.origins == {first: (report.binary_mismatches[first], report.binary_mismatches[first])}
    assert later and report.end_to_end.near_ties < report.end_to_end.differing  # followers are not ties
    assert "every difference traced to float rounding upstream" in lines
    assert report.per_layer.exact and "all exact" in lines, lines
    kinds = [line.split(" -> ")[1].split(" [")[0] for line in report.per_layer.fused]
    assert kinds.count("binary_conv2d") == 2  # the segments ran as binary kernels, as in the whole model
    assert report.per_layer.unchecked == {} and "compiled without" not in lines
    assert report.ok and lines.endswith("VERIFY OK")


def test_a_kernel_error_fails_per_layer(near_tie_model, monkeypatch):
    """A genuine compiler error (the binary conv's zero-padding correction left out) shows in
    the per-layer check as a segment that differs on ONNX Runtime's own inputs."""
    import bnn_tvm.relay_passes.fuse_binary_conv2d as fuse

    original = fuse.padding_correction
    def without_table(*args, **kw):
        table, ycls, xcls = original(*args, **kw)
        return np.zeros_like(table), ycls, xcls

    monkeypatch.setattr(fuse, "padding_correction", without_table)
    path, x = near_tie_model
    report = verify(path, "x86", x=x)
    assert not report.per_layer.exact and not report.ok
    bad = [r for r in report.per_layer.results if not r.exact]
    assert bad and all(r.binary or r.tensor == report.output_names[0] for r in bad)
    lines = "\n".join(report.lines())
    assert "(a compiler error; please report it)" in lines and lines.endswith("VERIFY FAILED")


def test_per_layer_on_the_command_line(tmp_path, capsys):
    """``--per-layer`` on a model exact end to end adds the per-layer lines; without it one line
    says it was not run."""
    path = shortcut_model(tmp_path / "m.onnx", 0.5)
    assert main(["verify", path]) == 0
    printed = capsys.readouterr().out
    assert "per layer: not run (end to end exact" in printed and "VERIFY OK" in printed
    assert main(["verify", path, "--per-layer"]) == 0
    printed = capsys.readouterr().out
    assert "per layer: 5 segments (2 binary, 3 float)" in printed and "all exact" in printed
    assert "rule: VERIFY OK when" in printed and "VERIFY OK" in printed


def test_segments_cut_at_binarized_tensors_float_layers_and_shared_tensors(tmp_path):
    """A residual stream is computed by the first segment that needs it and read by the later ones."""
    from bnn_tvm.compilation.compiler import lower_onnx
    from bnn_tvm.compilation.verify_layers import cut_into_segments, materialised_tensors

    g = GraphBuilder([1, 8, 6, 6], seed=3)
    stem = g.conv("x", np.random.default_rng(3).standard_normal((16, 8, 3, 3)).astype(np.float32), pad=1)
    b0 = g.binarize(stem)
    x1 = g.node("Add", [g.batch_norm(g.conv(b0, g.binary_weight((16, 16, 3, 3)), pad=1), *g.random_bn(16)), stem])
    b1 = g.binarize(x1)
    x2 = g.node("Add", [g.batch_norm(g.conv(b1, g.binary_weight((16, 16, 3, 3)), pad=1), *g.random_bn(16)), x1])
    lowered = lower_onnx(save(g.model([x2]), tmp_path / "residual.onnx"))
    floats, materialised = materialised_tensors(lowered)
    assert floats == {stem} and {stem, x1, x2} <= materialised
    segments = cut_into_segments(lowered.onnx_model.graph, set(lowered.packed_kinds()), {stem}, {x2}, materialised)
    found = {tuple(s.outputs): sorted(s.inputs) for s in segments}
    assert found == {(b0,): [stem], (b1, x1): sorted([stem, b0]), (stem,): ["x"], (x2,): sorted([x1, b1])}


def test_ternary_packs_are_cuts(tmp_path):
    """A ``Sign`` of a residual sum (which can be 0) is packed as sign and nonzero planes by a
    kernel whose rewrite names the conv reading them first: the ``Sign``'s output is what that
    kernel materialises, so it is a cut, and a near-tie before it stays in its own segment."""
    from bnn_tvm.compilation.compiler import lower_onnx
    from bnn_tvm.compilation.verify_layers import materialised_tensors

    g = GraphBuilder([1, 8, 6, 6], seed=3)
    stem = g.conv("x", np.random.default_rng(3).standard_normal((16, 8, 3, 3)).astype(np.float32), pad=1)
    s0 = g.node("Sign", [stem])
    x1 = g.node("Add", [g.batch_norm(g.conv(s0, g.binary_weight((16, 16, 3, 3)), pad=1), *g.random_bn(16)), stem])
    s1 = g.node("Sign", [x1])
    x2 = g.node("Add", [g.batch_norm(g.conv(s1, g.binary_weight((16, 16, 3, 3)), pad=1), *g.random_bn(16)), x1])
    lowered = lower_onnx(save(g.model([x2]), tmp_path / "ternary_residual.onnx"))
    assert lowered.packed_kinds() == {s0: "pack_ternary", s1: "pack_ternary"}
    _, materialised = materialised_tensors(lowered)
    assert {s0, s1, x1, x2} <= materialised


def test_segment_that_differs_only_at_near_ties_is_reported_apart():
    """A binary segment whose differing values all sit at near-ties of ONNX Runtime's own input
    (float rounding inside the segment) is not a compiler error; one more differing value that is
    not a near-tie is."""
    from bnn_tvm.compilation.verify_layers import PerLayerReport, SegmentResult

    tie = SegmentResult("sign_14", True, 1, 0.0, ["sign_12"], near_ties=1)
    report = PerLayerReport([tie, SegmentResult("sign_16", True, 0, 0.0, ["sign_14"])])
    assert report.exact and "near-ties only" in report.lines()[0]
    assert any("float rounding inside the segment" in line for line in report.lines())
    wrong = PerLayerReport([SegmentResult("sign_14", True, 2, 0.0, ["sign_12"], near_ties=1)])
    assert not wrong.exact and "compiler error" in " ".join(wrong.lines())


def test_near_ties_excuse_a_segment_only_behind_a_summing_op():
    """Elementwise ops round alike in ONNX Runtime and the kernels: a near-tie after them alone
    (a k-bit Quant on the input) that differs is a compiler error; after a conv it may not be."""
    from onnx import helper

    from bnn_tvm.compilation.verify_layers import sums_before

    graph = helper.make_graph([
        helper.make_node("Div", ["x", "s"], ["d"]), helper.make_node("Round", ["d"], ["q"]),
        helper.make_node("Conv", ["q", "w"], ["c"]), helper.make_node("Sign", ["c"], ["b"]),
    ], "g", [], [])
    assert not sums_before(graph, "q", {"x"})
    assert sums_before(graph, "b", {"x"}) and not sums_before(graph, "b", {"c"})


def test_tf2onnx_segments_compile_to_the_whole_models_binary_kernels(tmp_path):
    """Larq binarizers as tf2onnx writes them (NHWC between transposes, between reshapes on a 1x1
    map): each segment input is fed in the NCHW layout and each binarized output compared there, so that the
    segments' transposes cancel and their convs run binary with the binarizers in their
    thresholds, as in the whole model; the inner ``Sign`` of ``Sign(Add(Sign(x), 0.1))``, inside
    a kernel of the whole model, is no cut."""
    g = GraphBuilder([1, 16, 6, 6], seed=28)
    scale = g.rng.uniform(0.2, 2.0, (24, 1, 1, 1)).astype(np.float32)
    y = g.conv(g.larq_binarizer_nhwc("x", pad_one=True), g.binary_weight((24, 16, 3, 3)) * scale,
               bias=g.rng.standard_normal(24).astype(np.float32))
    y = g.conv(g.larq_binarizer_nhwc(y, pad_one=True), g.binary_weight((8, 24, 3, 3)))
    y = g.conv(g.larq_binarizer_nhwc(y, pad_one=False), g.binary_weight((8, 8, 6, 6)))  # to 1x1
    # on a 1x1 feature map tf2onnx writes the transposes as reshapes
    nhwc = g.node("Reshape", [y, g.const(np.array([1, 1, 1, 8], np.int64))])
    bits = g.node("Sign", [g.node("Add", [g.node("Sign", [nhwc]), g.const(np.float32(0.1))])])
    out = g.conv(g.node("Reshape", [bits, g.const(np.array([1, 8, 1, 1], np.int64))]), g.binary_weight((5, 8, 1, 1)))
    report = verify(save(g.model([out]), tmp_path / "tf2onnx.onnx"), "x86",
                    x=np.random.default_rng(4).standard_normal((1, 16, 6, 6)).astype(np.float32), per_layer=True)
    lines = "\n".join(report.lines())
    assert report.ok and report.per_layer.exact, lines
    kinds = [line.split(" -> ")[1].split(" [")[0] for line in report.per_layer.fused]
    assert kinds.count("layout_transposes_cancelled") >= 3, report.per_layer.fused
    assert kinds.count("binary_conv2d_threshold") >= 3 and "binary_conv2d" in kinds, report.per_layer.fused
    binary = [r.tensor for r in report.per_layer.results if r.binary]
    assert len(binary) == 4, binary  # the four outer Signs, not the inner ones
    assert not any("binary_conv2d" in kernel for kernel in report.per_layer.unchecked), report.per_layer.unchecked


def test_float_rounding_compounding_after_the_binarizers_is_told_apart(tmp_path):
    """A float layer's last-ulp difference (an average pool summing in another order than ONNX
    Runtime's) made large against the output by cancellation (minus ONNX Runtime's own values):
    beyond the tolerance end to end, yet every binarized value is identical and every kernel within
    rounding on ONNX Runtime's inputs; ``verify`` says so and passes, and names it."""
    def model(path, subtract=None):
        g = GraphBuilder(SHAPE, seed=9)
        pooled = g.node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        hidden = g.conv(g.binarize(pooled), g.binary_weight((8, 8, 3, 3)), pad=1)
        out = g.node("Add", [hidden, pooled])
        if subtract is not None:
            out = g.node("Sub", [out, g.const(subtract)])
        return save(g.model([out]), path)

    x = inputs(batch=1)
    probe = model(tmp_path / "probe.onnx")
    theirs = reference_outputs(onnx.load(probe), x, "x")[0]
    report = verify(model(tmp_path / "cancel.onnx", theirs[0]), "x86", x=x)
    if report.max_rel_diff <= 1e-5:
        pytest.skip("the average pool rounds as ONNX Runtime's on this machine: nothing to compound")
    lines = "\n".join(report.lines())
    assert not report.binary_mismatches and report.binary_checked and report.float_drift, lines
    assert report.per_layer is not None and report.per_layer.exact, lines
    assert "the float layers' rounding compounding" in lines and report.ok
