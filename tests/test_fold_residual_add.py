"""``FoldResidualAdd`` on small Relax modules: the shortcut add after a binary conv's float
epilogue joins that epilogue as its last step (the conv's value rounded first, then the
residual added, as the graph does), and the per-channel ops after the add (ReActNet's RPReLU)
follow it; the output is bit-identical. An add whose conv output is also read elsewhere stays."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from conftest import emit_binarizer, per_channel, run_pass, run_relax

from bnn_tvm.relay_passes.fold_float_epilogues import fold_float_epilogues
from bnn_tvm.relay_passes.fold_residual_add import fold_residual_add
from bnn_tvm.relay_passes.fuse_binary_conv2d import fuse_binary_conv2d
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

RNG = np.random.default_rng(19)
SHAPE = [1, 16, 6, 6]
WEIGHT = np.where(RNG.standard_normal((16, 16, 3, 3)) >= 0, 1, -1).astype(np.float32)


def residual_block(rprelu: bool = False, shared: bool = False):
    """``x + bn(conv(b(x)))`` [then RPReLU's shift, PReLU, shift], with the passes before this one
    applied; ``shared``: the batch norm's output is a second output too."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            conv = bb.emit(relax.op.nn.conv2d(bits, relax.const(WEIGHT), padding=[1, 1, 1, 1]))
            bn = bb.emit(relax.op.add(relax.op.multiply(conv, per_channel(RNG.uniform(0.1, 3, 16))),
                                      per_channel(RNG.standard_normal(16))))
            out = bb.emit(relax.op.add(bn, x))
            if rprelu:
                out = bb.emit(relax.op.subtract(out, per_channel(RNG.standard_normal(16))))
                out = bb.emit(relax.op.nn.prelu(out, relax.const(RNG.uniform(0.1, 0.9, 16).astype(np.float32))))
                out = bb.emit(relax.op.add(out, per_channel(RNG.standard_normal(16))))
            result = bb.emit_output(relax.Tuple([out, bn]) if shared else out)
        bb.emit_func_output(result)
    mod = fuse_binary_conv2d([])(lower_binarizers([])(bb.get()))
    return relax.transform.DeadCodeElimination()(fold_float_epilogues([])(mod))


def epilogues(mod) -> list[str]:
    return [str(f.attrs["bnn.epilogue"]) for _, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "bnn.epilogue" in f.attrs]


def test_fires_the_add_and_the_ops_after_it_join_the_epilogue_bit_identically():
    for rprelu in (False, True):
        before = residual_block(rprelu)
        after, log = run_pass(fold_residual_add, before)
        assert log.changed
        (steps,) = epilogues(after)
        expected = "multiply,add,residual" + (",subtract,prelu,add" if rprelu else "")
        assert steps == expected
        x = RNG.standard_normal(SHAPE).astype(np.float32)
        np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_an_epilogue_whose_output_is_read_elsewhere_keeps_its_add():
    before = residual_block(shared=True)
    after, log = run_pass(fold_residual_add, before)
    assert not log.changed
    assert epilogues(after) == ["multiply,add"]
