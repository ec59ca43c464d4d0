"""``FoldZeroPadIntoConv`` on small Relax modules: ``conv(Sign(Pad(x, 0)), W, p)`` becomes
``conv(Sign(x), W, p + pad)``, and the pass leaves alone every pad that is not a zero pad of the
two spatial axes of an NCHW conv's input (or the frames of a lifted 1-D conv's one-row view)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from conftest import run_pass

from bnn_tvm.relay_passes.common import op_name
from bnn_tvm.relay_passes.fold_zero_pad_into_conv import ZERO_PAD, fold_zero_pad_into_conv
from bnn_tvm.relay_passes.lift_conv1d import lift_conv1d

SPATIAL_PAD = [0, 0, 0, 0, 1, 2, 0, 1]  # NCHW, before/after per axis: top 1, bottom 2, left 0, right 1


def padded_sign_conv(pad_width=SPATIAL_PAD, pad_value=0.0, sign_first=False, conv_padding=(1, 1, 1, 1)):
    """``main(x) = conv2d(Sign(Pad(x)), W, conv_padding)`` (or ``Pad(Sign(x))`` with ``sign_first``)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4, 6, 6], "float32"))
    weight = relax.const(np.where(np.random.default_rng(0).standard_normal((8, 4, 3, 3)) >= 0, 1, -1).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            if sign_first:
                binary = bb.emit(relax.op.nn.pad(bb.emit(relax.op.sign(x)), pad_width, "constant", pad_value))
            else:
                binary = bb.emit(relax.op.sign(bb.emit(relax.op.nn.pad(x, pad_width, "constant", pad_value))))
            out = bb.emit_output(relax.op.nn.conv2d(binary, weight, padding=conv_padding))
        bb.emit_func_output(out)
    return bb.get()


def calls(mod) -> list:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(e, relax.Call) else None)
    return found


def conv_of(mod):
    (conv,) = [c for c in calls(mod) if op_name(c) == "relax.nn.conv2d"]
    return conv


@pytest.mark.parametrize("sign_first", [False, True], ids=["sign_of_pad", "pad_of_sign"])
def test_fires_zero_pad_becomes_the_convs_padding(sign_first):
    after, log = run_pass(fold_zero_pad_into_conv, padded_sign_conv(sign_first=sign_first), dce=False)
    assert log.changed and [r.kernel for r in log.rewrites] == [ZERO_PAD]
    assert "zero Pad [1, 0, 2, 1]" in log.rewrites[0].detail
    conv = conv_of(after)
    # conv padding is (top, left, bottom, right): 1 + 1, 1 + 0, 1 + 2, 1 + 1
    assert [int(p) for p in conv.attrs.padding] == [2, 1, 3, 2]
    live = calls(relax.transform.DeadCodeElimination()(after))
    assert not any(op_name(c) == "relax.nn.pad" for c in live)
    assert sum(op_name(c) == "relax.sign" for c in live) == 1


def test_fired_module_computes_the_same():
    before = padded_sign_conv()
    after, _ = run_pass(fold_zero_pad_into_conv, before, dce=False)
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    x[0, 0, 0, :3] = 0  # Sign(0) = 0, as the padded zeros are
    results = []
    for mod in (before, after):
        vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize(
    "pad_width,pad_value",
    [
        (SPATIAL_PAD, 1.0),  # a ±1 pad is no conv padding (FuseBinaryConv2d's explicit pad handles it)
        ([1, 0, 0, 0, 0, 0, 0, 0], 0.0),  # batch padding
        ([0, 0, 0, 0, -1, 0, 0, 0], 0.0),  # a crop
    ],
    ids=["pad_of_ones", "batch_pad", "crop"],
)
def test_refuses_pads_that_are_not_spatial_zero_padding(pad_width, pad_value):
    before = padded_sign_conv(pad_width=pad_width, pad_value=pad_value)
    after, log = run_pass(fold_zero_pad_into_conv, before, dce=False)
    assert not log.changed
    tvm.ir.assert_structural_equal(after, before)


def padded_sign_conv1d(pad_width=(0, 0, 0, 0, 2, 1)):
    """``main(x) = conv1d(Sign(Pad(x)), W)`` on ``[1, 4, 6]`` frames, lifted to a 2-D conv over
    one row (``LiftConv1d``), as DFSMN's memory blocks pad their frames before the binarizer."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4, 6], "float32"))
    weight = relax.const(np.where(np.random.default_rng(2).standard_normal((8, 4, 5)) >= 0, 1, -1).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            binary = bb.emit(relax.op.sign(bb.emit(relax.op.nn.pad(x, list(pad_width), "constant", 0.0))))
            out = bb.emit_output(relax.op.nn.conv1d(binary, weight))
        bb.emit_func_output(out)
    return lift_conv1d()(bb.get())


def test_fires_on_a_lifted_conv1d_frame_pad():
    before = padded_sign_conv1d()
    after, log = run_pass(fold_zero_pad_into_conv, before, dce=False)
    assert log.changed and [r.kernel for r in log.rewrites] == [ZERO_PAD]
    # the one-row conv's padding is (top, left, bottom, right): the frames' 2 and 1
    assert [int(p) for p in conv_of(after).attrs.padding] == [0, 2, 0, 1]
    live = calls(relax.transform.DeadCodeElimination()(after))
    assert not any(op_name(c) == "relax.nn.pad" for c in live)
    x = np.random.default_rng(3).standard_normal((1, 4, 6)).astype(np.float32)
    x[0, 1, :2] = 0  # Sign(0) = 0, as the padded zeros are
    results = [relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
               for mod in (before, after)]
    np.testing.assert_array_equal(results[0], results[1])


def test_refuses_a_lifted_conv1d_pad_of_the_batch():
    before = padded_sign_conv1d(pad_width=(1, 0, 0, 0, 0, 0))
    after, log = run_pass(fold_zero_pad_into_conv, before, dce=False)
    assert not log.changed
