"""Helpers shared by the test modules, and the ``x86_target`` fixture.

Test modules import these with ``from conftest import ...`` (pytest puts ``tests/`` on the path);
no test module imports another. The ONNX graph builders are in ``onnx_builders.py``, published
BNN forms in ``published_bnn.py``, BiBERT's attention in ``bibert.py``, random graphs in
``random_graphs.py`` (swept over many seeds by ``tools/random_graph_sweep.py``).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import relax, te

from bnn_tvm.compilation.inspection import inspect_onnx
from bnn_tvm.compilation.verify import verify
from bnn_tvm.relay_passes.common import pack_bits
from bnn_tvm.relay_passes.analysis.rounding import OPEN_HIGH
from bnn_tvm.relay_passes.fuse_binary_conv2d import multibit_offsets, padding_correction
from bnn_tvm.schedules import arm, bitserial, x86


# ------------------------------------------------------------------------------------------
# Binary kernels as the passes emit them, scheduled and run, and their numpy references


X86 = tvm.target.Target({"kind": "llvm", "mcpu": "rocketlake"})  # AVX-512 with VPOPCNTDQ
SKX = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})  # AVX-512 without VPOPCNTDQ: byte counters
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})  # runs on any AVX-512 host too
RASP3B = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53", "mattr": ["+neon"]})
INT32_MIN, INT32_MAX = np.iinfo(np.int32).min, np.iinfo(np.int32).max

HOST_UNIT = x86.vector_unit(tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}))
host_has_avx512 = pytest.mark.skipif(
    HOST_UNIT.name != "avx512-vpopcntdq", reason="this host has no AVX-512 VPOPCNTDQ: those kernels cannot run here"
)


host_has_avx512bw = pytest.mark.skipif(
    not HOST_UNIT.name.startswith("avx512"), reason="this host has no AVX-512: those kernels cannot run here"
)


@pytest.fixture(params=[pytest.param(X86, id="avx512", marks=host_has_avx512),
                        pytest.param(SKX, id="avx512-bytes", marks=host_has_avx512bw), pytest.param(AVX2, id="avx2")])
def x86_target(request):
    """Each x86 unit the kernels are checked on: AVX-512 VPOPCNTDQ (32-bit counters), AVX-512
    without it (byte counters in zmm registers), both on hosts that have AVX-512, and AVX2 (byte
    counters, on any x86-64 host with AVX2)."""
    return request.param


HOST_X86 = X86 if HOST_UNIT.name == "avx512-vpopcntdq" else AVX2  # the tests' default: runs here


def placeholder(array: np.ndarray, name: str) -> te.Tensor:
    return te.placeholder([tvm.tirx.IntImm("int64", d) for d in array.shape], str(array.dtype), name=name)


def bipolar(rng, shape) -> np.ndarray:
    return np.where(rng.standard_normal(shape) >= 0, 1, -1).astype(np.int64)


def conv_reference(a: np.ndarray, w: np.ndarray, stride: int, pad: int, dilation: int = 1) -> np.ndarray:
    """NCHW conv with zero padding (integer for ±1 values, float64 for floats)."""
    a = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = a.shape
    oc, _, kh, kw = w.shape
    oh, ow = (h - dilation * (kh - 1) - 1) // stride + 1, (wd - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, oc, oh, ow), np.result_type(a, w))
    for i in range(kh):
        for j in range(kw):
            y, x = i * dilation, j * dilation
            window = a[:, :, y : y + stride * (oh - 1) + 1 : stride, x : x + stride * (ow - 1) + 1 : stride]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, i, j])
    return out


def thresholds(rng, channels: int):
    """Per-channel intervals with open sides at int32's limits: the passes emit ±2^30
    (``OPEN_LOW``/``OPEN_HIGH``), but the CPU schedules keep the integer result apart from the
    comparisons and stay exact even at INT32_MIN/MAX."""
    low = rng.integers(-30, 5, channels).astype(np.int32)
    high = rng.integers(-5, 30, channels).astype(np.int32)
    low[::3] = INT32_MIN
    high[1::4] = INT32_MAX
    return low, high


def packed_decisions(decisions: np.ndarray) -> np.ndarray:
    """bool ``[..., C]`` -> packed words, as ``threshold_pack`` writes them."""
    return pack_bits(np.where(decisions, 1, -1))


def conv_case(rng, n, c, h, w, oc, k, stride, pad, threshold: bool, scale: bool = False, dilation: int = 1):
    a, weight = bipolar(rng, (n, c, h, w)), bipolar(rng, (oc, c, k, k))
    dot = conv_reference(a, weight, stride, pad, dilation)
    padding, dilations = (pad,) * 4, (dilation, dilation)
    inputs = [
        pack_bits(a.transpose(0, 2, 3, 1)),
        pack_bits(weight.transpose(0, 2, 3, 1)),
        *padding_correction(weight, (h, w), (stride, stride), padding, dilations),
    ]
    taps = c * k * k
    attrs = {"bnn.taps": taps, "bnn.strides": [stride, stride], "bnn.padding": list(padding), "bnn.pad_ones": 0,
             "bnn.dilation": list(dilations)}

    def conv(d, wt, *corr):
        return bitserial.binary_conv2d_dot(d, wt, bitserial.BorderTable(*corr), taps, (stride, stride), padding, dilation=dilations)

    if threshold:
        low, high = thresholds(rng, oc)
        inputs += [low, high]
        expected = packed_decisions(((dot >= low[:, None, None]) & (dot <= high[:, None, None])).transpose(0, 2, 3, 1))
        return "binary_conv2d_threshold", attrs, inputs, lambda d, wt, t, yc, xc, lo, hi: bitserial.threshold_pack(conv(d, wt, t, yc, xc), lo, hi), expected
    if scale:
        alpha = np.exp2(rng.integers(-3, 3, oc)).astype(np.float32)
        inputs.append(alpha)
        expected = dot.astype(np.float32) * alpha[:, None, None]
        return "binary_conv2d", attrs, inputs, lambda d, wt, t, yc, xc, s: bitserial.dot_to_float_nchw(conv(d, wt, t, yc, xc), s), expected
    return "binary_conv2d", attrs, inputs, lambda d, wt, t, yc, xc: bitserial.dot_to_float_nchw(conv(d, wt, t, yc, xc)), dot.astype(np.float32)


def multibit_conv_case(rng, bits, n, c, h, w, oc, k, stride, pad, threshold: bool, scale: bool = False):
    """A conv on k-bit planes (DoReFa levels q in 0..L) with ±1 weights, as ``fuse_multibit_conv2d``
    emits it; float output ``sum(q * w) / L [* alpha]`` or threshold words."""
    levels = (1 << bits) - 1
    q, weight = rng.integers(0, levels + 1, (n, c, h, w)), bipolar(rng, (oc, c, k, k))
    dot = conv_reference(q, weight, stride, pad)
    padding = (pad,) * 4
    planes = np.stack([pack_bits(np.where((q >> j) & 1, 1, -1).transpose(0, 2, 3, 1)) for j in range(bits)])
    inputs = [planes, pack_bits(weight.transpose(0, 2, 3, 1)), multibit_offsets(weight, levels)]
    attrs = {"bnn.taps": c * k * k, "bnn.levels": levels, "bnn.strides": [stride, stride], "bnn.padding": list(padding)}

    def conv(d, wt, offsets):
        return bitserial.multibit_conv2d_dot(d, wt, offsets, (stride, stride), padding)

    if threshold:
        low, high = thresholds(rng, oc)
        inputs += [low, high]
        expected = packed_decisions(((dot >= low[:, None, None]) & (dot <= high[:, None, None])).transpose(0, 2, 3, 1))
        return "multibit_conv2d_threshold", attrs, inputs, lambda d, wt, o, lo, hi: bitserial.threshold_pack(conv(d, wt, o), lo, hi), expected
    value = (dot.astype(np.float32) / np.float32(levels)).astype(np.float32)
    if scale:
        alpha = rng.uniform(0.5, 2, oc).astype(np.float32)
        inputs.append(alpha)
        expected = (value * alpha[:, None, None]).astype(np.float32)
        return "multibit_conv2d", attrs, inputs, lambda d, wt, o, s: bitserial.dot_to_float_nchw(conv(d, wt, o), s, levels=levels), expected
    return "multibit_conv2d", attrs, inputs, lambda d, wt, o: bitserial.dot_to_float_nchw(conv(d, wt, o), levels=levels), value


def dense_case(rng, n, k, o, threshold: bool):
    a, weight = bipolar(rng, (n, k)), bipolar(rng, (o, k))
    dot = a @ weight.T
    inputs = [pack_bits(a), pack_bits(weight)]
    attrs = {"bnn.taps": k}
    if threshold:
        low, high = thresholds(rng, o)
        inputs += [low, high]
        expected = packed_decisions((dot >= low) & (dot <= high))
        return "binary_dense_threshold", attrs, inputs, lambda d, w, lo, hi: bitserial.threshold_pack(bitserial.binary_dense_dot(d, w, k), lo, hi), expected
    return "binary_dense", attrs, inputs, lambda d, w: bitserial.dot_to_float_nchw(bitserial.binary_dense_dot(d, w, k)), dot.astype(np.float32)


def build(op, attrs, inputs, compute, target):
    tensors = [placeholder(array, f"arg{i}") for i, array in enumerate(inputs)]
    func = te.create_prim_func(tensors + [compute(*tensors)]).with_attrs({"bnn.op": op, **attrs})
    family = arm if str(target.attrs.get("mtriple", "")).startswith(("aarch64", "arm")) else x86
    scheduled = family.schedule(func, op, target)
    return scheduled, tvm.compile(tvm.IRModule({"main": scheduled.func}), target)


def run(scheduled, executable, inputs, out_shape, out_dtype):
    dev = tvm.cpu()
    moved = [np.ascontiguousarray(a.transpose(scheduled.relayouts[i])) if i in scheduled.relayouts else a for i, a in enumerate(inputs)]
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    executable(*[tvm.runtime.tensor(a, dev) for a in moved], out)
    return out.numpy()


def check_case(case, target=None, fast=True):
    op, attrs, inputs, compute, expected = case
    scheduled, executable = build(op, attrs, inputs, compute, target or HOST_X86)
    if fast:
        assert "generic" not in scheduled.plan, scheduled.plan
    got = run(scheduled, executable, inputs, expected.shape, expected.dtype)
    np.testing.assert_array_equal(got, expected)
    return scheduled


EPILOGUE = ("multiply", "multiply", "add", "rsubtract", "divide")  # weight scale, BN (s, shift), c - y, y / c


def epilogue_consts(rng, channels: int) -> list[np.ndarray]:
    # BN-like scales with full 24-bit mantissas: an FMA (one rounding for d * s + b) differs
    # from the reference's two roundings on many outputs, so a contracted epilogue fails.
    scale = np.exp2(rng.integers(-2, 2, channels)).astype(np.float32)
    s = rng.uniform(0.1, 3, channels).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    c = rng.standard_normal(channels).astype(np.float32)
    divisor = rng.uniform(5, 9, channels).astype(np.float32)  # never zero
    return [scale, s, b, c, divisor]


def residual_conv_case(rng, n, c, h, w, oc, stride, pad, rprelu: bool = False):
    """A conv whose epilogue is a product then a residual tensor added
    (``relay_passes.fold_residual_add``): the kernel must round ``d * s`` before adding the
    residual (an FMA would not), and add it at the right position of every channel. With
    ``rprelu``, ReActNet's RPReLU follows the residual (subtract, PReLU, add per channel, after
    the transpose: each channel's constants on its own row, the PReLU's product not fused into
    the add)."""
    op, attrs, inputs, _, _ = conv_case(rng, n, c, h, w, oc, 3, stride, pad, threshold=False)
    taps = attrs["bnn.taps"]
    after = ("subtract", "prelu", "add") if rprelu else ()
    steps = ("multiply", "multiply", "residual", *after)
    dot = conv_reference(unpacked(inputs[0], c).transpose(0, 3, 1, 2), unpacked(inputs[1], c).transpose(0, 3, 1, 2), stride, pad)
    consts = epilogue_consts(rng, oc)[:2]
    residual = rng.standard_normal(dot.shape).astype(np.float32)
    expected = numpy_epilogue(dot, consts, channel_axis=1, steps=steps[:2]) + residual
    after_consts = [rng.standard_normal(oc).astype(np.float32), rng.uniform(0.1, 0.9, oc).astype(np.float32),
                    rng.standard_normal(oc).astype(np.float32)][: len(after)]
    for step, const in zip(after, after_consts):
        expected = numpy_epilogue(expected, [const], channel_axis=1, steps=(step,))

    def compute(d, wt, t, yc, xc, *cs):
        conv = bitserial.binary_conv2d_dot(d, wt, bitserial.BorderTable(t, yc, xc), taps, (stride, stride), (pad,) * 4)
        return bitserial.dot_to_float_nchw(conv, *cs, steps=steps)

    attrs = {**attrs, "bnn.epilogue": ",".join(steps)}
    return op + "_epilogue", attrs, inputs + consts + [residual] + after_consts, compute, expected


def positional_conv_case(rng, n, c, h, w, oc, stride, pad, residual: bool = False):
    """A conv whose epilogue mixes per-channel steps with positional ones
    (``bitserial.positional_step``), as XNOR++ writes its output scales and batch norm:
    ``((d * o) * h) * w``, then ``* s + b``, a per-position bias ``[C, H, W]`` and a clamp; with
    ``residual``, a residual tensor after the scales. Each op rounds on its own, in this order,
    read at the right row, column and channel."""
    op, attrs, inputs, _, _ = conv_case(rng, n, c, h, w, oc, 3, stride, pad, threshold=False)
    taps = attrs["bnn.taps"]
    dot = conv_reference(unpacked(inputs[0], c).transpose(0, 3, 1, 2), unpacked(inputs[1], c).transpose(0, 3, 1, 2), stride, pad)
    oh, ow = dot.shape[2:]
    steps = ("multiply", bitserial.positional_step("multiply", "y"), bitserial.positional_step("multiply", "x"),
             *(("residual",) if residual else ()), "multiply", "add", bitserial.positional_step("add", "cyx"), "maximum")
    consts = {  # full-mantissa values: a contracted or reordered product rounds differently
        "o": rng.uniform(0.5, 1.5, oc), "h": rng.uniform(0.5, 1.5, (1, oh, 1)), "w": rng.uniform(0.5, 1.5, (1, 1, ow)),
        "res": rng.standard_normal(dot.shape), "s": rng.uniform(0.1, 3, oc), "b": rng.standard_normal(oc),
        "p": rng.standard_normal((oc, oh, ow)), "lo": np.full(oc, -0.5),
    }
    consts = {k: v.astype(np.float32) for k, v in consts.items()}
    column = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
    y = dot.astype(np.float32)
    y = (y * column(consts["o"])).astype(np.float32)
    y = (y * consts["h"][None]).astype(np.float32)
    y = (y * consts["w"][None]).astype(np.float32)
    if residual:
        y = y + consts["res"]
    y = (y * column(consts["s"])).astype(np.float32)
    y = (y + column(consts["b"])).astype(np.float32)
    y = (y + consts["p"][None]).astype(np.float32)
    expected = np.maximum(y, column(consts["lo"]))
    names = ["o", "h", "w", *(["res"] if residual else []), "s", "b", "p", "lo"]

    def compute(d, wt, t, yc, xc, *cs):
        conv = bitserial.binary_conv2d_dot(d, wt, bitserial.BorderTable(t, yc, xc), taps, (stride, stride), (pad,) * 4)
        return bitserial.dot_to_float_nchw(conv, *cs, steps=steps)

    attrs = {**attrs, "bnn.epilogue": ",".join(steps)}
    return op + "_epilogue", attrs, inputs + [consts[k] for k in names], compute, expected


def numpy_epilogue(dot: np.ndarray, consts: list[np.ndarray], channel_axis: int, steps=EPILOGUE) -> np.ndarray:
    """The epilogue as the float graph computes it: one float32 rounding per op."""
    from bnn_tvm.relay_passes.analysis.chain import NUMPY_OPS

    shape = [1] * dot.ndim
    shape[channel_axis] = -1
    y = dot.astype(np.float32)
    for op, const in zip(steps, consts):
        y = NUMPY_OPS[op](y, const.reshape(shape)).astype(np.float32)
    return y


def unpacked(words: np.ndarray, channels: int) -> np.ndarray:
    """Packed channels-last words back to ±1 (int64), for references."""
    bits = (words[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    return np.where(bits.reshape(words.shape[:-1] + (-1,))[..., :channels] == 1, 1, -1).astype(np.int64)


def function_asm(executable, name_part: str) -> str:
    """The assembly of the compiled function whose symbol contains ``name_part``."""
    asm = executable.mod.inspect_source("asm") if not executable.mod.imports else executable.mod.imports[0].inspect_source("asm")
    blocks = re.split(r"\n(?=[A-Za-z_][\w.]*:\n)", asm)
    found = [b for b in blocks if b.split(":", 1)[0].endswith("_compute_") or name_part in b.split(":", 1)[0]]
    return "\n".join(found) or asm


def loops(asm: str) -> list[str]:
    """Bodies of the innermost loops: from a label to the last backward branch to it, with no
    other loop's label inside."""
    lines = asm.splitlines()
    labels = {line.rstrip(":"): i for i, line in enumerate(lines) if re.match(r"^\.?L\w+:$", line)}
    spans = {}
    for i, line in enumerate(lines):
        match = re.search(r"\b(?:j\w+|b\.\w+|b|b(?:eq|ne|hs|lo|mi|pl|hi|ls|ge|lt|gt|le)|cbnz|cbz|tbnz|tbz)\s+.*?(\.?L\w+)\s*$", line)
        if match and match.group(1) in labels and labels[match.group(1)] < i:
            spans[match.group(1)] = (labels[match.group(1)], i)
    innermost = [
        (start, end) for start, end in spans.values()
        if not any(start < other_start <= end and (other_start, other_end) != (start, end) for other_start, other_end in spans.values())
    ]
    return ["\n".join(lines[start : end + 1]) for start, end in innermost]


# ------------------------------------------------------------------------------------------
# Ternary kernels (sign and nonzero planes)


def ternary(rng, shape, zeros: float = 0.3) -> np.ndarray:
    """Values in {-1, 0, +1}, about ``zeros`` of them 0."""
    values = bipolar(rng, shape)
    values[rng.random(shape) < zeros] = 0
    return values


def planes_of(values: np.ndarray) -> np.ndarray:
    """Ternary weights' planes ``[2, OC, ...]`` from {-1, 0, +1} values ``[OC, C, ...]``, channels packed last."""
    order = (0, *range(2, values.ndim), 1)
    return np.stack([pack_bits(np.where(values > 0, 1, -1).transpose(order)),
                     pack_bits(np.where(values != 0, 1, -1).transpose(order))])


def words_of(values: np.ndarray) -> np.ndarray:
    """``pack_ternary``'s interleaved words ``[N, ..., 2 * CW]`` from {-1, 0, +1} activations."""
    planes = planes_of(values)
    return np.stack([planes[0], planes[1]], axis=-1).reshape(*planes.shape[1:-1], -1)


def weight_planes(weight: np.ndarray) -> np.ndarray:
    """Packed ``[OC, KH, KW, CW]`` bits of ±1 weights, or the two planes of ternary ones."""
    if np.all(weight != 0):
        return pack_bits(weight.transpose(0, 2, 3, 1))
    return planes_of(weight)


def ternary_conv_case(rng, n, c, h, w, oc, k, stride, pad, threshold=False, scale=False, dilation=1,
                      ternary_weights=False):
    a = ternary(rng, (n, c, h, w))
    weight = ternary(rng, (oc, c, k, k), 0.4) if ternary_weights else bipolar(rng, (oc, c, k, k))
    dot = conv_reference(a, weight, stride, pad, dilation)
    padding, dilations = (pad,) * 4, (dilation, dilation)
    inputs_ = [words_of(a), weight_planes(weight)]
    attrs = {"bnn.taps": c * k * k, "bnn.strides": [stride, stride], "bnn.padding": list(padding),
             "bnn.dilation": list(dilations)}

    def conv(d, wt):
        return bitserial.ternary_conv2d_dot(d, wt, (stride, stride), padding, dilations)

    if threshold:
        low, high = thresholds(rng, oc)
        expected = packed_decisions(((dot >= low[:, None, None]) & (dot <= high[:, None, None])).transpose(0, 2, 3, 1))
        return ("ternary_conv2d_threshold", attrs, inputs_ + [low, high],
                lambda d, wt, lo, hi: bitserial.threshold_pack(conv(d, wt), lo, hi), expected)
    if scale:
        alpha = np.exp2(rng.integers(-3, 3, oc)).astype(np.float32)
        return ("ternary_conv2d", attrs, inputs_ + [alpha], lambda d, wt, s: bitserial.dot_to_float_nchw(conv(d, wt), s),
                dot.astype(np.float32) * alpha[:, None, None])
    return "ternary_conv2d", attrs, inputs_, lambda d, wt: bitserial.dot_to_float_nchw(conv(d, wt)), dot.astype(np.float32)


def ternary_dense_case(rng, n, k, o, threshold=False, ternary_weights=False):
    a = ternary(rng, (n, k))
    weight = ternary(rng, (o, k), 0.4) if ternary_weights else bipolar(rng, (o, k))
    dot = a @ weight.T
    inputs_ = [words_of(a), planes_of(weight) if ternary_weights else pack_bits(weight)]
    attrs = {"bnn.taps": k}
    if threshold:
        low, high = thresholds(rng, o)
        return ("ternary_dense_threshold", attrs, inputs_ + [low, high],
                lambda d, w, lo, hi: bitserial.threshold_pack(bitserial.ternary_dense_dot(d, w), lo, hi),
                packed_decisions((dot >= low) & (dot <= high)))
    return ("ternary_dense", attrs, inputs_, lambda d, w: bitserial.dot_to_float_nchw(bitserial.ternary_dense_dot(d, w)),
            dot.astype(np.float32))


def binary_conv_ternary_weights_case(rng, n, c, h, w, oc, k, stride, pad, threshold=False):
    """Binary activations, ternary weights: the binary conv kernel with weight planes and the
    correction the passes give it (zero padding, plus ``nonzeros[o] - taps``)."""
    from bnn_tvm.relay_passes.fuse_binary_conv2d import padding_correction

    a, weight = bipolar(rng, (n, c, h, w)), ternary(rng, (oc, c, k, k), 0.4)
    dot = conv_reference(a, weight, stride, pad)
    padding, taps = (pad,) * 4, c * k * k
    table, ycls, xcls = padding_correction(weight, (h, w), (stride, stride), padding)
    table = (table + (np.count_nonzero(weight.reshape(oc, -1), axis=1) - taps)[None, None, :]).astype(np.int32)
    inputs_ = [pack_bits(a.transpose(0, 2, 3, 1)), planes_of(weight), table, ycls, xcls]
    attrs = {"bnn.taps": taps, "bnn.strides": [stride, stride], "bnn.padding": list(padding), "bnn.pad_ones": 0,
             "bnn.ternary_weights": 1}

    def conv(d, wt, *correction):
        return bitserial.binary_conv2d_dot(d, wt, bitserial.BorderTable(*correction), taps, (stride, stride), padding)

    if threshold:
        low, high = thresholds(rng, oc)
        expected = packed_decisions(((dot >= low[:, None, None]) & (dot <= high[:, None, None])).transpose(0, 2, 3, 1))
        return ("binary_conv2d_threshold", attrs, inputs_ + [low, high],
                lambda d, wt, t, yc, xc, lo, hi: bitserial.threshold_pack(conv(d, wt, t, yc, xc), lo, hi), expected)
    return ("binary_conv2d", attrs, inputs_, lambda d, wt, t, yc, xc: bitserial.dot_to_float_nchw(conv(d, wt, t, yc, xc)),
            dot.astype(np.float32))


# ------------------------------------------------------------------------------------------
# Models checked against ONNX Runtime


def check(path, x, expect_fused):
    report = verify(path, "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    fused = " | ".join(report.fused)
    for kernel in expect_fused:
        assert kernel in fused, fused
    assert report.binary_checked >= 1
    return report


def inputs(shape, seed=1, batch=3):
    return np.random.default_rng(seed).standard_normal((batch, *shape[1:])).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Binarizer and quantizer forms, as exporters write them


def binarize_ones_like(g, x):
    """PyTorch's ``torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))``: the ±1 are
    ``ConstantOfShape(Shape(x))`` tensors, constant only once the batch is pinned."""
    ge = g.node("GreaterOrEqual", [x, g.const(np.float32(0))])
    one = helper.make_tensor("value", 1, [1], [1.0])
    ones = g.node("ConstantOfShape", [g.node("Shape", [x])], value=one)
    minus_ones = g.node("Neg", [g.node("ConstantOfShape", [g.node("Shape", [x])], value=one)])
    return g.node("Where", [ge, ones, minus_ones])


def dorefa(g, x, bits=2, clip_as_max_min=False):
    """DoReFa's k-bit activation: Round(Clip(x, 0, 1) * L) / L."""
    levels = np.float32((1 << bits) - 1)
    if clip_as_max_min:  # as torch's exporter writes a clamp
        clipped = g.node("Min", [g.node("Max", [x, g.const(np.float32(0))]), g.const(np.float32(1))])
    else:
        clipped = g.node("Clip", [x, g.const(np.float32(0)), g.const(np.float32(1))])
    rounded = g.node("Round", [g.node("Mul", [clipped, g.const(levels)])])
    return g.node("Div", [rounded, g.const(levels)])


def qonnx_quant_reference(x, scale, zeropt, bits, signed, narrow, mode):
    """QONNX's definition of ``Quant``, in numpy float32 (its own reference computes the same)."""
    q = (x / scale).astype(np.float32) + zeropt
    if bits == 1 and signed:
        q = np.where(q >= 0, np.float32(1), np.float32(-1))
    else:
        low = -(2 ** (bits - 1)) + int(narrow) if signed else 0
        high = 2 ** (bits - 1) - 1 if signed else 2**bits - 1 - int(narrow)
        q = {"ROUND": np.round, "CEIL": np.ceil, "FLOOR": np.floor}[mode](np.clip(q, low, high))
    return ((q - zeropt).astype(np.float32) * scale).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Kernels replayed on the CPU


def random_arguments(func, rng) -> list[np.ndarray]:
    """Random inputs for a kernel, thresholds placed where the dots of random words fall (so
    packed outputs mix 0 and 1 bits); the last argument is the output."""
    arrays, thresholds = [], []
    for param in func.params:
        shape = [int(s) for s in param.shape]
        dtype = str(param.dtype)
        if dtype == "uint32":
            value = rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
        elif dtype == "int32" and len(shape) == 1 and len(arrays) == 2 and str(func.attrs["bnn.op"]).startswith("multibit_"):
            # a k-bit conv's offsets: L times the +1 weights (set bits) of each output channel
            levels = 2 ** int(func.params[0].shape[0]) - 1
            value = (levels * np.unpackbits(arrays[1].reshape(shape[0], -1).view(np.uint8), axis=1).sum(axis=1)).astype(np.int32)
        elif dtype == "int32" and len(arrays) in (3, 4) and str(func.attrs["bnn.op"]).startswith("binary_conv2d"):
            # a binary conv's border classes of rows and columns: indices into the correction table
            value = rng.integers(0, arrays[2].shape[len(arrays) - 3], shape).astype(np.int32)
        elif dtype == "int32" and len(shape) == 1:  # low, high thresholds per channel
            words = int(np.prod([int(v) for v in func.params[1].shape[1:]]))
            data_shape = [int(v) for v in func.params[0].shape]
            if str(func.attrs["bnn.op"]).startswith("ternary_"):  # nonzeros - 2 popc((s ^ w) & m), about 0
                center, variance = 0, 16 * words
            elif len(data_shape) == 5:  # k bit planes: L P - sum over planes of popc(a ^ w) << j, about 0
                center, variance = 0, 16 * words * sum(4**j for j in range(data_shape[0]))
            else:  # XNOR: taps - 2 popc(a ^ w), popcounts of random words ~ 16 +- 2.8 per word
                center, variance = int(func.attrs["bnn.taps"]) - 32 * words, 32 * words
            spread = int(np.sqrt(variance)) + 1
            if len(thresholds) % 2 == 0:
                value = rng.integers(center - 2 * spread, center + 2 * spread, shape)
            else:
                bounded = arrays[thresholds[-1]] + rng.integers(0, 4 * spread, shape)
                value = np.where(rng.random(shape) < 0.5, OPEN_HIGH, bounded)  # the passes' open end
            thresholds.append(len(arrays))
            value = value.astype(np.int32)
        elif dtype == "int32":  # padding corrections per border class
            value = rng.integers(-3, 4, shape).astype(np.int32)
        else:
            value = rng.standard_normal(shape).astype(dtype)
        arrays.append(value)
    return arrays


def run_on_cpu(func, arrays) -> np.ndarray:
    import tvm

    built = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), "llvm")
    tensors = [tvm.runtime.tensor(a.copy()) for a in arrays]
    built(*tensors)
    return tensors[-1].numpy()


# Per-pass tests on small Relax modules ---------------------------------------------------------
def relax_ops(mod) -> list[str]:
    """The ops of the calls left in ``mod``'s ``main``, in post order."""
    from tvm import relax

    from bnn_tvm.relay_passes.common import op_name

    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(op_name(e)) if isinstance(e, relax.Call) else None)
    return found


def check_bibench_resnet(conv, path, dynamo: bool) -> None:
    """BiBench's ResNet of ``conv`` layers (one block a stage, 16x16 inputs), exported to ``path``:
    its 6 binary convs run binary (the stem and the two downsampling shortcuts stay float) and
    verify exactly, every binarized tensor compared."""
    from published_bnn import bibench_resnet, export  # torch: only for the tests that build one

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(bibench_resnet(conv), path, dynamo, size=16)
    convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    assert sum(not r.binary for r in convs) == 3  # the stem and the two downsampling shortcuts
    assert sum(r.binary for r in convs) == 6, [(r.name, r.note) for r in convs if not r.binary]
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    report = verify(path, "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    assert report.binary_checked >= 6


def run_pass(make_pass, mod, dce: bool = True, **options):
    """``(module, log)``: the pass ``make_pass(logs, **options)`` on ``mod``, then (``dce``) dead-code
    elimination as the pipeline's cleanup runs it, so that what the rewrite left unused is gone."""
    logs = []
    after = make_pass(logs, **options)(mod)
    return (relax.transform.DeadCodeElimination()(after) if dce else after), logs[0]


def run_relax(mod, x: np.ndarray) -> np.ndarray:
    """``mod``'s ``main`` on ``x``, built for the host CPU by TVM's default pipeline."""
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def bnn_kernels(mod) -> list[str]:
    """The ``bnn.op`` of every kernel (PrimFunc) of ``mod``, sorted."""
    return sorted(str(f.attrs["bnn.op"]) for _, f in mod.functions_items()
                  if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "bnn.op" in f.attrs)


def per_channel(values):
    """One float32 value per channel of an NCHW tensor: a ``[1, C, 1, 1]`` Relax constant."""
    from tvm import relax

    return relax.const(np.asarray(values, np.float32).reshape(1, -1, 1, 1))


def emit_binarizer(bb, t):
    """This project's binarizer ``where(t >= 0, 1, -1)`` on ``t``, emitted by the block builder ``bb``."""
    from tvm import relax

    one, minus_one, zero = (relax.const(np.float32(v)) for v in (1.0, -1.0, 0.0))
    return bb.emit(relax.op.where(relax.op.greater_equal(t, zero), one, minus_one))
