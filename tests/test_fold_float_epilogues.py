"""``FoldFloatEpilogues`` on small Relax modules: the per-channel float ops after a binary conv
that end in a float output (scale, batch norm, PReLU) run in the conv kernel as its epilogue,
each op rounded as the unfused graph rounds it: the output is bit-identical. Constants that vary
along rows and columns (XNOR++'s output scales) join the same epilogue, and XNOR++ as BiBench
writes it compiles with no float op left after its convs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from published_bnn import export, resnet
from tvm import relax

from conftest import bnn_kernels, emit_binarizer, per_channel, relax_ops, run_relax

from bnn_tvm.compilation.compiler import lower_onnx
from bnn_tvm.compilation.verify import verify
from bnn_tvm.relay_passes.analysis.chain import Step, positional
from bnn_tvm.relay_passes.fold_float_epilogues import fold_float_epilogues
from bnn_tvm.relay_passes.fuse_binary_conv2d import fuse_binary_conv2d
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

RNG = np.random.default_rng(17)
SHAPE = [1, 16, 6, 6]
WEIGHT = np.where(RNG.standard_normal((16, 16, 3, 3)) >= 0, 1, -1).astype(np.float32)


def batch_norm(bb, d):  # full-mantissa scales: an FMA would round differently from the graph
    s, t = RNG.uniform(0.1, 3, 16), RNG.standard_normal(16)
    return bb.emit(relax.op.add(relax.op.multiply(d, per_channel(s)), per_channel(t)))


def batch_norm_prelu(bb, d):
    return bb.emit(relax.op.nn.prelu(batch_norm(bb, d), relax.const(RNG.uniform(0.05, 0.3, 16).astype(np.float32))))


def binary_conv_then(chain):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            conv = bb.emit(relax.op.nn.conv2d(bits, relax.const(WEIGHT), padding=[1, 1, 1, 1]))
            out = bb.emit_output(chain(bb, conv))
        bb.emit_func_output(out)
    mod = lower_binarizers([])(bb.get())
    return relax.transform.DeadCodeElimination()(fuse_binary_conv2d([])(mod))


@pytest.mark.parametrize("chain,steps", [(batch_norm, 2), (batch_norm_prelu, 3)], ids=["batch_norm", "batch_norm_prelu"])
def test_fires_the_float_ops_run_in_the_kernel_bit_identically(chain, steps):
    before = binary_conv_then(chain)
    logs = []
    after = relax.transform.DeadCodeElimination()(fold_float_epilogues(logs)(before))
    (log,) = logs
    assert log.changed and [r.kernel for r in log.rewrites] == ["binary_conv2d_epilogue"]
    assert f"{steps} float op(s)" in log.rewrites[0].detail
    assert "binary_conv2d_epilogue" in bnn_kernels(after) and "binary_conv2d" not in bnn_kernels(after)
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def xnorpp_scales(bb, d):
    """XNOR++'s ``y * o_scale * h_scale * w_scale`` (``[1, C, 1, 1]``, ``[1, 1, H, 1]``, ``[1, 1, 1, W]``),
    then a batch norm: full-mantissa values, so a reordered product rounds differently."""
    o, h, w = (relax.const(RNG.uniform(0.5, 1.5, shape).astype(np.float32))
               for shape in ((1, 16, 1, 1), (1, 1, SHAPE[2], 1), (1, 1, 1, SHAPE[3])))
    scaled = bb.emit(relax.op.multiply(bb.emit(relax.op.multiply(bb.emit(relax.op.multiply(d, o)), h)), w))
    return batch_norm(bb, scaled)


def position_bias_first(bb, d):
    """A per-position bias ``[1, C, H, W]`` subtracted from a constant, then a per-channel scale."""
    bias = relax.const(RNG.standard_normal((1, 16, SHAPE[2], SHAPE[3])).astype(np.float32))
    return bb.emit(relax.op.multiply(bb.emit(relax.op.subtract(bias, d)), per_channel(RNG.uniform(0.5, 2, 16))))


@pytest.mark.parametrize("chain,steps,positional_steps", [(xnorpp_scales, 5, ["multiply@y", "multiply@x"]),
                                                          (position_bias_first, 2, ["rsubtract@cyx"])],
                         ids=["xnorpp_scales", "position_bias_first"])
def test_fires_positional_constants_run_in_the_epilogue_bit_identically(chain, steps, positional_steps):
    before = binary_conv_then(chain)
    logs = []
    after = relax.transform.DeadCodeElimination()(fold_float_epilogues(logs)(before))
    (log,) = logs
    assert [r.kernel for r in log.rewrites] == ["binary_conv2d_epilogue"]
    assert f"{steps} float op(s)" in log.rewrites[0].detail
    (kernel,) = [f for _, f in after.functions_items() if getattr(f, "attrs", None) and "bnn.epilogue" in f.attrs]
    assert [s for s in str(kernel.attrs["bnn.epilogue"]).split(",") if "@" in s] == positional_steps
    assert not {"relax.multiply", "relax.add", "relax.subtract"} & set(relax_ops(after))  # no float op left
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_positional_constants_are_read_only_where_they_keep_the_shape():
    """A constant is positional when it varies along channels, rows or columns of an NCHW output
    and broadcasting it does not widen the output; one varying along the batch is not."""
    out = (2, 16, 6, 6)
    assert positional(np.ones((1, 1, 6, 1), np.float32), out).shape == (1, 6, 1)
    assert positional(np.ones((6, 6), np.float32), out).shape == (1, 6, 6)  # broadcast from the right
    assert positional(np.ones((2, 1, 1, 6), np.float32), out) is None  # per sample
    assert positional(np.ones((1, 1, 12, 1), np.float32), out) is None  # would widen the output
    assert positional(np.ones((1, 16, 6), np.float32), (2, 16, 6)) is None  # not NCHW
    step = Step("multiply", positional(np.ones((1, 1, 1, 6), np.float32), out))
    assert step.epilogue == "multiply@x"
    with pytest.raises(ValueError):
        step(np.ones((16, 3), np.float32))  # no per-channel value to fold into thresholds


def test_binarizer_after_positional_scales_reads_the_epilogue_output():
    """Before a binarizer the chain is not folded into integer thresholds (the decision would
    differ per position): the conv computes the scaled values in its epilogue, the pack reads them."""
    def scales_then_sign(bb, d):
        h = relax.const(RNG.uniform(0.5, 1.5, (1, 1, SHAPE[2], 1)).astype(np.float32))
        return emit_binarizer(bb, bb.emit(relax.op.multiply(d, h)))

    before = binary_conv_then(scales_then_sign)
    after = relax.transform.DeadCodeElimination()(fold_float_epilogues([])(before))
    assert "binary_conv2d_epilogue" in bnn_kernels(after) and "pack_sign" in bnn_kernels(after)
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_xnorpp_resnet_runs_its_scales_in_the_conv_epilogues(tmp_path, dynamo, monkeypatch):
    """XNOR++ as BiBench writes it (``published_bnn.XnorPlusPlusConv``): the output scales over
    channels, rows and columns, the batch norm, the residual add and the Hardtanh all run in the
    ternary conv's epilogue; no float op is left between the convs, and it verifies exactly."""
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")  # the tile epilogue must tensorize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(resnet("xnorpp", blocks=1), tmp_path / "xnorpp.onnx", dynamo, size=16)
    lowered = lower_onnx(path)
    # 6 binary convs, each with its scales in the epilogue; the stem and the 2 shortcuts float convs
    assert lowered.kernel_calls() == {"ternary_conv2d_epilogue": 6, "pack_ternary": 6, "float_conv2d": 3}
    left = set(relax_ops(lowered.mod))
    assert not {"relax.multiply", "relax.nn.batch_norm", "relax.clip"} & left, left  # the classifier's add stays
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    x[:, :, ::4] = 0.0  # exact zeros: where the convs' torch.sign gives 0
    report = verify(path, "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    assert report.binary_checked >= 6
