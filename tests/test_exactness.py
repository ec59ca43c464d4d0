"""Every compiled binary layer is bit-exact against ONNX Runtime (optimisations off).

Each case asserts that the binary path was actually taken (the fused kernels are listed), so a
silent float fallback cannot pass for an exact binary kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check, inputs
from onnx import helper
from onnx_builders import GraphBuilder, conv_block_model, save

from bnn_tvm.compilation.inspection import inspect_onnx


@pytest.mark.parametrize(
    "cin,cout,size,stride,pad",
    [
        (16, 24, 8, 1, 1),  # zero padded, stride 1
        (16, 24, 9, 1, 0),  # unpadded
        (33, 70, 9, 2, 1),  # stride 2, odd size, channels not multiples of 32/64
        (5, 3, 7, 2, 0),  # tiny channel counts
    ],
)
def test_binary_conv_shapes(tmp_path, cin, cout, size, stride, pad):
    model, _ = conv_block_model(cin, cout, size, stride=stride, pad=pad, seed=cin)
    path = save(model, tmp_path / "m.onnx")
    check(path, inputs([1, cin, size, size]), ["binary_conv2d_threshold", "-> binary_conv2d"])


def test_negative_bn_scale_flips_comparison(tmp_path):
    model, _ = conv_block_model(12, 40, 6, negative_fraction=0.5, seed=3)
    path = save(model, tmp_path / "m.onnx")
    check(path, inputs([1, 12, 6, 6]), ["binary_conv2d_threshold"])


def numpy_binary_conv(a, w, pad):
    """Reference conv of ±1 activations with zero padding (int64, NCHW)."""
    a = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = a.shape
    oc, _, kh, kw = w.shape
    out = np.zeros((n, oc, h - kh + 1, wd - kw + 1), np.int64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", a[:, :, i : i + out.shape[2], j : j + out.shape[3]], w[:, :, i, j])
    return out


def test_activation_exactly_on_bn_threshold(tmp_path):
    """BN mean equal to values the conv really produces: the float result is exactly 0 there."""
    cin, cout, size = 8, 10, 6
    x = inputs([1, cin, size, size], seed=5)
    g = GraphBuilder([1, cin, size, size], seed=7)
    w = g.binary_weight((cout, cin, 3, 3))
    conv = numpy_binary_conv(np.where(x >= 0, 1, -1), w.astype(np.int64), pad=1)
    # per channel, the most frequent conv value becomes the BN mean: many exact ties
    mean = np.array([np.bincount(conv[:, c].ravel() - conv.min()).argmax() + conv.min() for c in range(cout)])
    gamma = np.where(np.arange(cout) % 2 == 0, 1.3, -0.7).astype(np.float32)
    bn = (gamma, np.zeros(cout, np.float32), mean.astype(np.float32), np.full(cout, 0.7, np.float32))
    ties = sum(int(np.sum(conv[:, c] == mean[c])) for c in range(cout))
    assert ties > 20  # the case really exercises ties

    a = g.binarize("x")
    y = g.batch_norm(g.conv(a, w, pad=1), *bn)
    b = g.binarize(y)
    out = g.conv(b, g.binary_weight((4, cout, 1, 1)))
    path = save(g.model([out]), tmp_path / "m.onnx")
    check(path, x, ["binary_conv2d_threshold"])


def test_binarizer_at_exactly_zero(tmp_path):
    """Inputs that are exactly 0 (and -0.0) binarize to +1, as ``x >= 0`` says."""
    g = GraphBuilder([1, 6, 5, 5])
    a = g.binarize("x")
    out = g.conv(a, g.binary_weight((4, 6, 3, 3)), pad=1)
    path = save(g.model([out, a]), tmp_path / "m.onnx")
    x = inputs([1, 6, 5, 5], seed=2)
    x[:, :, ::2] = 0.0
    x[:, :3, 1] = -0.0
    report = check(path, x, ["-> binary_conv2d"])
    assert report.max_abs_diff == 0.0  # integer results, exactly representable


def test_float_output_after_binary_dense(tmp_path):
    """Flatten -> binary dense -> float BN output: weights permuted to the packed layout."""
    g = GraphBuilder([1, 20, 4, 4], seed=11)
    a = g.binarize("x")
    flat = g.node("Flatten", [a], axis=1)
    w = g.binary_weight((20 * 16, 9))
    dense = g.node("MatMul", [flat, g.const(w, "w")])
    out = g.batch_norm(dense, *g.random_bn(9))
    path = save(g.model([out]), tmp_path / "m.onnx")
    report = check(path, inputs([1, 20, 4, 4], seed=4), ["binary_dense_epilogue"])
    assert report.max_abs_diff == 0.0  # the kernel's epilogue computes BN in the reference's float order


def test_threshold_follows_reference_rounding(tmp_path):
    """BN parameters where the textbook formula ``(d - mean) / std * gamma + beta`` is exactly 0
    but ONNX Runtime's folded ``d * s + (beta - mean * s)`` rounds below 0: the compiled threshold
    must follow the reference's rounding, not the algebra."""
    cin, cout, size = 8, 6, 6
    x = inputs([1, cin, size, size], seed=9)
    g = GraphBuilder([1, cin, size, size], seed=13)
    w = g.binary_weight((cout, cin, 3, 3))
    conv = numpy_binary_conv(np.where(x >= 0, 1, -1), w.astype(np.int64), pad=1)
    rng = np.random.default_rng(0)
    f32 = np.float32
    params = []
    for c in range(cout):
        d0 = f32(np.bincount(conv[:, c].ravel() - conv.min()).argmax() + conv.min())
        while True:
            mean, var, gamma = f32(rng.uniform(-3, 3)), f32(rng.uniform(0.3, 3)), f32(rng.uniform(0.2, 2))
            inv = f32(1) / np.sqrt(var + f32(1e-5))
            beta = -(((d0 - mean) * inv) * gamma)
            textbook = ((d0 - mean) * inv) * gamma + beta
            scale = inv * gamma
            folded = d0 * scale + (beta - mean * scale)
            if textbook == 0 and folded < 0:
                params.append((gamma, beta, mean, var))
                break
    bn = [np.array(v, np.float32) for v in zip(*params)]
    a = g.binarize("x")
    y = g.batch_norm(g.conv(a, w, pad=1), *bn)
    b = g.binarize(y)
    out = g.conv(b, g.binary_weight((4, cout, 1, 1)))
    path = save(g.model([out, b]), tmp_path / "m.onnx")
    check(path, x, ["binary_conv2d_threshold"])


def test_residual_sum_exactly_zero_in_the_reference(tmp_path):
    """``x + BN(binary conv(sign x))`` made exactly 0 in ONNX Runtime at many positions: the next
    binarizer sees a tie, so a float BN that rounds even 1 ulp differently (another formula, an
    FMA) flips it. The BN after a binary conv is the kernel's epilogue, in the reference's order
    and with no FMA contraction: exact."""
    cin = 12
    g = GraphBuilder([1, cin, 6, 6], seed=14)
    conv = g.conv(g.binarize("x"), g.binary_weight((cin, cin, 3, 3)), pad=1)
    y = g.batch_norm(conv, *g.random_bn(cin, 0.3))
    summed = g.node("Add", [y, "x"])
    out = g.conv(g.binarize(summed), g.binary_weight((4, cin, 3, 3)), pad=1)
    model = g.model([out, y])
    from bnn_tvm.compilation.reference import reference_outputs

    x = inputs([1, cin, 6, 6], seed=15)
    bn_out = reference_outputs(model, x, "x")[1]  # depends on the signs of x only
    ties = np.sign(-bn_out) == np.where(x >= 0, 1.0, -1.0)  # where x = -y keeps x's sign
    x = np.where(ties, -bn_out, x).astype(np.float32)
    assert ties.sum() > 50
    path = save(g.model([out]), tmp_path / "m.onnx")
    check(path, x, ["binary_conv2d_epilogue", "residual add as the binary conv's last epilogue step"])


def test_rprelu_after_the_residual_add_runs_in_the_epilogue(tmp_path):
    """ReActNet's block: ``RPReLU(x + BN(binary conv(sign x)))`` (subtract, PReLU, add per
    channel), its output both the next binarizer's input and a graph output. The three ops run
    in the conv kernel after the residual, each rounded on its own: the float output is exact,
    and so are the next binarizer's bits."""
    cin = 16
    g = GraphBuilder([1, cin, 6, 6], seed=16)
    conv = g.conv(g.binarize("x"), g.binary_weight((cin, cin, 3, 3)), pad=1)
    summed = g.node("Add", [g.batch_norm(conv, *g.random_bn(cin, 0.3)), "x"])
    rng = np.random.default_rng(17)
    shifted = g.node("Sub", [summed, g.const(rng.standard_normal((1, cin, 1, 1)).astype(np.float32))])
    slope = g.const(rng.uniform(0.1, 0.9, (cin, 1, 1)).astype(np.float32))
    rprelu = g.node("Add", [g.node("PRelu", [shifted, slope]), g.const(rng.standard_normal((1, cin, 1, 1)).astype(np.float32))])
    out = g.conv(g.binarize(rprelu), g.binary_weight((4, cin, 3, 3)), pad=1)
    path = save(g.model([out, rprelu]), tmp_path / "m.onnx")
    report = check(path, inputs([1, cin, 6, 6], seed=18), ["subtract after the residual add", "prelu after the residual add", "add after the residual add"])
    assert report.max_abs_diff == 0


@pytest.mark.parametrize("concat_is_output,tail", [(False, "rprelu"), (True, "rprelu"), (False, "clip")])
def test_rprelu_after_a_channel_concat_runs_in_each_parts_epilogue(tmp_path, concat_is_output, tail):
    """ReActNet's reduction block: ``RPReLU(concat(BN(conv_a(s)) + y, BN(conv_b(s)) + y))`` with
    two binary 1x1 convs on the same bits. Each op runs on each part with that part's slice of
    its constants, in the part's conv kernel after the residual: exact, as are the next
    binarizer's bits. When the concat itself is read elsewhere (here a graph output) the ops
    stay one float op each on it, also exact. A clamp (scalar bounds, nothing to slice) too."""
    cin = 16
    g = GraphBuilder([1, cin, 6, 6], seed=19)
    bits = g.binarize("x")
    parts = [g.node("Add", [g.batch_norm(g.conv(bits, g.binary_weight((cin, cin, 1, 1))), *g.random_bn(cin, 0.3)), "x"])
             for _ in range(2)]
    cat = g.node("Concat", parts, axis=1)
    rng = np.random.default_rng(20)
    if tail == "rprelu":
        shifted = g.node("Sub", [cat, g.const(rng.standard_normal((1, 2 * cin, 1, 1)).astype(np.float32))])
        slope = g.const(rng.uniform(0.1, 0.9, (2 * cin, 1, 1)).astype(np.float32))
        end = g.node("Add", [g.node("PRelu", [shifted, slope]), g.const(rng.standard_normal((1, 2 * cin, 1, 1)).astype(np.float32))])
    else:
        end = g.node("Clip", [cat, g.const(np.float32(-1.5)), g.const(np.float32(1.5))])
    out = g.conv(g.binarize(end), g.binary_weight((4, 2 * cin, 3, 3)), pad=1)
    path = save(g.model([out, end] + ([cat] if concat_is_output else [])), tmp_path / "m.onnx")
    report = check(path, inputs([1, cin, 6, 6], seed=21), ["residual add as the binary conv's last epilogue step"])
    assert report.max_abs_diff == 0
    folded = sum("after the residual add" in line for line in report.fused)
    per_part = 3 if tail == "rprelu" else 1  # subtract, prelu, add; or the clip's maximum + minimum
    assert folded == (0 if concat_is_output else 2 * per_part), report.fused
    notes = {r.op_type: r for r in inspect_onnx(path) if r.op_type in ("Sub", "PRelu", "Clip")}
    assert all(r.binary != concat_is_output for r in notes.values()), notes


def test_residual_add_after_a_binary_dense_runs_in_its_epilogue(tmp_path):
    """A residual binary MLP: ``PReLU(x + (dense(sign x) * s + b))``, its output both a graph
    output and the next binarizer's input. The add and the PReLU after it run in the dense
    kernel's epilogue, each rounded on its own: exact."""
    features = 64
    g = GraphBuilder([1, features], seed=22)
    g.input = helper.make_tensor_value_info("x", 1, ["N", features])
    rng = np.random.default_rng(23)
    dense = g.node("Gemm", [g.binarize("x"), g.const(g.binary_weight((features, features)), "w")], transB=1)
    scaled = g.node("Add", [g.node("Mul", [dense, g.const(rng.uniform(0.01, 0.1, features).astype(np.float32))]),
                            g.const(rng.standard_normal(features).astype(np.float32))])
    summed = g.node("PRelu", [g.node("Add", [scaled, "x"]), g.const(rng.uniform(0.1, 0.9, features).astype(np.float32))])
    out = g.node("Gemm", [g.binarize(summed), g.const(g.binary_weight((10, features)), "w")], transB=1)
    path = save(g.model([out, summed]), tmp_path / "m.onnx")
    report = check(path, inputs([1, features], batch=5), ["residual add as the binary dense's last epilogue step",
                                                          "prelu after the residual add, in the binary dense's epilogue"])
    assert report.max_abs_diff == 0


def test_float_stem_with_bias_and_bn_in_its_epilogue(tmp_path):
    """A float 7x7 stride-2 stem conv with a bias and BN, then binary layers: the bias and BN run
    in the float conv's kernel (in the reference's order); the stem output agrees within float
    rounding (the conv's summation order is its own) and the binary layers after it are checked
    for identical activations."""
    g = GraphBuilder([1, 3, 20, 20], seed=16)
    rng = np.random.default_rng(16)
    w = rng.standard_normal((16, 3, 7, 7)).astype(np.float32) * 0.2
    stem = g.batch_norm(g.conv("x", w, stride=2, pad=3, bias=rng.standard_normal(16).astype(np.float32)), *g.random_bn(16))
    out = g.conv(g.binarize(stem), g.binary_weight((8, 16, 3, 3)), pad=1)
    path = save(g.model([out, stem]), tmp_path / "m.onnx")
    report = check(path, inputs([1, 3, 20, 20], seed=17), ["float conv + 3 float op(s) in its epilogue -> float_conv2d"])
    assert report.max_abs_diff < 1e-3


def test_first_difference_tells_float_rounding_from_a_compiler_error(tmp_path):
    """verify's analysis of a difference: the first differing binarized tensor, and whether the
    float graph puts each differing value within rounding of the binarizer's threshold."""
    import onnx

    from bnn_tvm.compilation.reference import decision_input, reference_outputs
    from bnn_tvm.compilation.verify import first_divergence

    g = GraphBuilder([1, 4, 5, 5], seed=30)
    y = g.node("Mul", ["x", g.const(np.float32(3))])
    bits = g.binarize(y)  # x >= 0 (the Where form)
    signs = g.node("Sign", [g.node("Add", [y, g.const(np.float32(1))])])
    model = g.model([bits, signs])
    assert decision_input(model, bits) == (y, 0.0)
    assert decision_input(model, signs)[1] == 0.0
    x = inputs([1, 4, 5, 5])
    x[0, 0, 0, :] = 0.0  # values on the threshold: float rounding upstream would decide them
    theirs = dict(zip([bits, signs], reference_outputs(model, x, "x")))
    ours = {name: value.copy() for name, value in theirs.items()}
    ours[bits][0, 0, 0, :] *= -1  # flipped only at the ties
    ours[signs][0, 1, 1, 1] *= -1  # a later tensor: not the first difference
    mismatches = {name: int(np.sum(ours[name] != theirs[name])) for name in ours}
    found = first_divergence(onnx.ModelProto.FromString(model.SerializeToString()), mismatches, ours, theirs, x, "x", None)
    assert (found.tensor, found.differing, found.near_ties) == (bits, 5, 5)
    assert "float rounding upstream" in found.line()
    ours[bits][1, 2, 3, 3] *= -1  # a value far from the threshold
    mismatches[bits] += 1
    found = first_divergence(model, mismatches, ours, theirs, x, "x", None)
    assert (found.differing, found.near_ties) == (6, 5) and "compiler error" in found.line()


def correction_by_taps(weight, in_hw, strides, padding, dilation) -> np.ndarray:
    """``[OC, OH, OW]``: the plain sum of ``w`` over each output position's padded taps."""
    from bnn_tvm.relay_passes.fuse_binary_conv2d import output_hw

    kernel = weight.shape[2]
    oh, ow = output_hw(in_hw, (kernel, kernel), strides, padding, dilation)
    expected = np.zeros((weight.shape[0], oh, ow), np.int64)
    for y in range(oh):
        for x in range(ow):
            for ky in range(kernel):
                for kx in range(kernel):
                    row = y * strides[0] - padding[0] + ky * dilation[0]
                    col = x * strides[1] - padding[1] + kx * dilation[1]
                    if not (0 <= row < in_hw[0] and 0 <= col < in_hw[1]):
                        expected[:, y, x] += weight[:, :, ky, kx].sum(axis=1)
    return expected


def spread(table, ycls, xcls) -> np.ndarray:
    """A per-border-class correction as the ``[OC, OH, OW]`` tensor it stands for."""
    return table[ycls][:, xcls].transpose(2, 0, 1)


@pytest.mark.parametrize("in_hw,strides,padding,dilation", [
    ((7, 9), (1, 1), (1, 1, 1, 1), (1, 1)), ((11, 6), (2, 1), (2, 1, 2, 3), (1, 2)), ((4, 4), (1, 1), (3, 3, 3, 3), (1, 1)),
    ((11, 10), (1, 1), (2, 2, 2, 2), (2, 2)),
])
def test_padding_correction_per_border_class_equals_the_sum_over_padded_taps(in_hw, strides, padding, dilation):
    """The correction table, spread over the output, equals the plain sum of ``w`` over each
    output position's padded taps (kernel 3x3 and 5x5, strides, dilation, asymmetric padding),
    and has one row per border class, not per position."""
    from bnn_tvm.relay_passes.fuse_binary_conv2d import padding_correction

    rng = np.random.default_rng(sum(in_hw))
    kernel = 5 if dilation == (1, 2) else 3
    weight = rng.choice([-1, 1], (4, 3, kernel, kernel)).astype(np.int64)
    table, ycls, xcls = padding_correction(weight, in_hw, strides, padding, dilation)
    np.testing.assert_array_equal(spread(table, ycls, xcls), correction_by_taps(weight, in_hw, strides, padding, dilation))
    assert table.shape[0] == len(set(ycls.tolist())) and table.shape[1] == len(set(xcls.tolist()))


def test_border_classes_of_a_dilated_conv_count_taps_dilation_apart():
    """Taken one apart, the border classes of a dilated conv give another (wrong) correction."""
    from bnn_tvm.relay_passes.fuse_binary_conv2d import padding_correction

    weight = np.random.default_rng(4).choice([-1, 1], (6, 3, 3, 3)).astype(np.int64)
    in_hw, padding = (11, 10), (2, 2, 2, 2)
    expected = correction_by_taps(weight, in_hw, (1, 1), padding, (2, 2))
    undilated = spread(*padding_correction(weight, in_hw, (1, 1), padding, (1, 1)))
    assert not np.array_equal(undilated[:, : expected.shape[1], : expected.shape[2]], expected)


def test_padding_correction_is_stored_per_border_class():
    """The correction of a 4096x4096 input is a 3 x 3 table per channel beside two index
    vectors: computing it takes memory of the order of those vectors, not of the output
    ([OC, OH, OW] int32 is 512 MiB here; the [OH, OW, KH, KW] mask it once came from, gigabytes)."""
    import tracemalloc

    from bnn_tvm.relay_passes.fuse_binary_conv2d import padding_correction

    weight = np.random.default_rng(0).choice([-1, 1], (8, 8, 3, 3)).astype(np.int64)
    tracemalloc.start()
    table, ycls, xcls = padding_correction(weight, (4096, 4096), (1, 1), (1, 1, 1, 1))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert table.shape == (3, 3, 8) and ycls.shape == xcls.shape == (4096,)
    assert peak < 2**20, peak  # a MiB: the row/column masks, not the 512 MiB output
