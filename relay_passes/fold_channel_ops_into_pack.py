"""Fold the per-channel float ops before a binarizer into its pack, and pack a channel concat
part by part.

A DenseNet layer (BinaryDenseNet, Larq's zoo) binarizes a batch norm of the concatenation of
every earlier layer's output: ``pack(bn_k(concat(x, c_1, ..., c_k)))``. No binary kernel
precedes the batch norm, so nothing folds it into thresholds, and each layer paid a concat, a
float pass for the batch norm and a pack over all channels. Per channel, the batch norm and the
binarizer only need their own channel's value, so:

* the per-channel ops fold into the pack kernel (``pack_sign_steps``). Each op is monotone per
  channel (a batch norm's ``x * s + (beta - mean * s)`` with ``s != 0``, a clamp, a shift), and so
  is float32 rounding, so the inputs the float graph sends to +1 form an interval of float32
  values: its ends are found at compile time by bisecting over every float32, evaluating the
  chain as ONNX Runtime rounds it (``Step``), and the kernel compares ``low <= x <= high``, no
  arithmetic. A chain not provably monotone (a zero or negative PReLU slope, an infinite
  constant, a division of a constant) is computed in the kernel instead, one float32 rounding
  per op (``apply_epilogue``): exact too, three times slower (the rounding fence between a
  multiply and an add keeps LLVM from vectorising it);
* over a channel concat whose parts start at multiples of 32 channels (a packed word never
  spans two parts), each part is packed with its slice of the constants and the words are
  concatenated (1/32 of the float data). Nested concats are read through to their parts.

A chain whose source is a single-use float conv or binary kernel is left to
``FoldFloatEpilogues`` (as cheap, and the kernels stay as before); one whose source is read
elsewhere too (a DenseNet transition conv feeds the concat and the next binarizer) is folded
here, where the epilogue would have computed the conv twice. Every op between the source and
the pack must have no other reader. For CPU targets, after ``FoldThresholds``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.chain import CHAIN_OPS, trace_chain
from .analysis.rounding import asymmetric_margin, asymmetric_value
from .common import PassLog, RuleContext, function_rule_pass, op_name, shape_of, use_counts

KERNEL = "pack_sign_steps"
EPILOGUE_SOURCES = ("relax.call_tir", "relax.nn.conv2d", "relax.matmul")  # take the ops as their epilogue


def channel_concat_parts(ctx: RuleContext, expr) -> list | None:
    """The tensors a concat along channels (axis 1) joins, nested concats read through; None
    when ``expr`` is not one."""
    concat = ctx.producer(expr)
    if op_name(concat) != "relax.concat" or int(concat.attrs.axis) % len(shape_of(expr)) != 1:
        return None
    parts = ctx.producer(concat.args[0])
    if not isinstance(parts, relax.Tuple):
        return None
    leaves = []
    for part in parts.fields:
        inner = channel_concat_parts(ctx, part)
        leaves.extend([part] if inner is None else inner)
    return leaves


def word_aligned(parts: list) -> bool:
    """Whether every part but the first starts at a multiple of 32 channels."""
    start = 0
    for part in parts[:-1]:
        start += shape_of(part)[1]
        if start % bitserial.WORD_BITS:
            return False
    return True


def is_chain_source(ctx: RuleContext, expr) -> bool:
    """Where the walk back from a pack stops: at anything but a per-channel float op."""
    node = ctx.producer(expr)
    if isinstance(node, relax.TupleGetItem):
        return op_name(ctx.producer(node.tuple_value)) != "relax.nn.batch_norm"
    return op_name(node) not in CHAIN_OPS


def pack_rule(uses: dict):
    def fold(ctx: RuleContext, call):
        kernel = ctx.bnn_kernel(call)
        if kernel is None or kernel[0] != "pack_sign" or "bnn.pair_groups" in kernel[1]:
            return None
        (x,) = ctx.kernel_inputs(call)
        traced = trace_chain(ctx, x, is_source=is_chain_source)
        if traced is None:
            return None
        source, steps, visited = traced
        inside = [v for v in visited[:-1] if isinstance(v, relax.Var)]
        if shape_of(source) != shape_of(x) or any(uses.get(v, 0) != 1 for v in inside):
            return None
        strict = bool(int(kernel[1].get("bnn.strict", 0)))
        margin = asymmetric_note(ctx, source, steps, strict)
        if margin is not None and not steps:  # nothing to fold: the binarizer's node gets the note
            ctx.fused("pack_sign", f"binarizer on a TTQ conv's b*P - a*N: {margin}")
            return None
        parts = channel_concat_parts(ctx, source)
        if parts is not None and not word_aligned(parts):
            parts = None
        # after a TTQ conv the ops fold here (compares only) rather than into its difference kernel
        if parts is None and (not steps or (margin is None and single_use_epilogue_source(ctx, source, uses))):
            return None
        packed = emit_packs(ctx, parts or [source], steps, strict)
        what = f"{len(steps)} float op(s) before the binarizer in its pack"
        if margin is not None:
            what += f", after a TTQ conv's b*P - a*N: {margin}"
        if parts:
            what += f", {len(parts)} concatenated parts packed apart"
        ctx.fused(KERNEL, what, *visited[:-1], *packed)
        ctx.alias((ctx.binding,), *packed)
        if len(packed) == 1:
            return packed[0]
        return relax.op.concat(packed, axis=len(shape_of(x)) - 1)

    return fold


def asymmetric_note(ctx: RuleContext, source, steps: list, strict: bool) -> str | None:
    """Whether the binarizer after a TTQ conv's ``b * P - a * N`` (and the per-channel ``steps``)
    is proven to decide as ONNX Runtime does (``analysis.rounding.asymmetric_margin``), as a
    note for ``inspect``; None when ``source`` is no such conv. The conv's float value is
    within rounding of the float graph's, so the decision is exact only away from its bounds."""
    value = asymmetric_value(ctx, source)
    if value is None:
        return None
    if steps:
        bounds = decision_bounds(steps, strict)
    else:  # x >= 0 (strict: x > 0)
        zero = np.zeros(len(value.plus), np.float32)
        bounds = (np.nextafter(zero, np.float32(1)) if strict else zero, np.full_like(zero, np.inf))
    if bounds is None:
        return "not proven exact: the float ops before the binarizer are not monotone per channel"
    proven = asymmetric_margin(value.plus, value.minus, value.positives, value.negatives, value.taps, *bounds)
    if proven.all():
        return "exact (no reachable value within float rounding of the threshold)"
    return (f"not proven exact in {int((~proven).sum())} of {proven.size} channels: a reachable value lies within "
            "float rounding of the threshold (ONNX Runtime sums the ±a, ±b terms in its own order), so a value "
            "there may differ")


def single_use_epilogue_source(ctx: RuleContext, source, uses: dict) -> bool:
    """A kernel or float layer read only by this chain: ``FoldFloatEpilogues`` takes the ops."""
    node = ctx.producer(source)
    return uses.get(source, 0) == 1 and isinstance(node, relax.Call) and op_name(node) in EPILOGUE_SOURCES


def emit_packs(ctx: RuleContext, parts: list, steps: list, strict: bool) -> list:
    """One pack per part, each with its channels' slice of the chain: float bounds where the
    chain is monotone, else the steps themselves."""
    bounds = decision_bounds(steps, strict) if steps else None
    ops = ("within",) if bounds is not None else tuple(step.op for step in steps)
    columns = list(bounds) if bounds is not None else [step.const for step in steps]
    packed, start = [], 0
    for part in parts:
        stop = start + shape_of(part)[1]
        consts = [relax.const(column[start:stop]) for column in columns]
        pack = ctx.emit_kernel(
            lambda t, *cs: bitserial.pack_sign(t, *cs, strict=strict, within=bounds is not None,
                                               steps=() if bounds is not None else ops),
            part,
            *consts,
            op=KERNEL if steps else "pack_sign",
            steps=",".join(ops),
            strict=strict,
        )
        packed.append(ctx.builder_.emit(pack, ctx.logged_name("part_packed")))
        start = stop
    return packed


def fold_channel_ops_into_pack(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return function_rule_pass(__name__, lambda func: pack_rule(use_counts(func)), logs)


# the float32 line in order, as integers: -inf .. -0 = +0 .. +inf (NaN left out)
KEY_LIMIT = 0x7F800000  # the key of +inf


def keys_to_floats(keys: np.ndarray) -> np.ndarray:
    """float32 values of order keys (``-k`` is the negative of ``k``'s float)."""
    bits = np.where(keys >= 0, keys, np.int64(0x80000000) | -keys).astype(np.uint32)
    return bits.view(np.float32)


def chain_direction(steps) -> np.ndarray | None:
    """Per channel +1 where the chain never decreases, -1 where it never increases; None when
    some step is not provably monotone on every float32 (infinities included)."""
    direction = None
    for step in steps:
        const = step.const.astype(np.float32)
        if not np.all(np.isfinite(const)):
            return None  # x + inf is NaN at -inf; x * inf is NaN at 0
        if step.op in ("add", "subtract", "maximum", "minimum"):
            sign = np.ones_like(const)
        elif step.op == "rsubtract":
            sign = -np.ones_like(const)
        elif step.op in ("multiply", "divide") and np.all(const != 0):
            sign = np.sign(const)  # a zero factor makes -inf * 0 NaN
        elif step.op == "prelu" and np.all(const > 0):
            sign = np.ones_like(const)
        else:
            return None
        direction = sign if direction is None else direction * sign
    return direction


def decision_bounds(steps, strict: bool):
    """Per channel float32 ``(low, high)``: the chain ends ``>= 0`` (``strict``: ``> 0``) on a
    float32 input exactly when ``low <= x <= high``; None when the chain is not provably
    monotone. Bisection over the float32 order (34 probes), the chain evaluated as the float
    graph rounds it at every probe; an empty set is ``low = +inf, high = -inf``."""
    direction = chain_direction(steps)
    if direction is None:
        return None
    return bisect_bounds(steps, direction, strict)


def chain_at(steps, x: np.ndarray) -> np.ndarray:
    """The chain on ``x`` (float32 ``[channels]``, one value per channel)."""
    y = x.astype(np.float32)[:, None]
    with np.errstate(all="ignore"):
        for step in steps:
            y = step(y).astype(np.float32)
    return y[:, 0]


def bisect_bounds(steps, direction: np.ndarray, strict: bool):
    """``decision_bounds`` of a chain monotone in ``direction`` per channel."""

    def holds(keys):
        y = chain_at(steps, keys_to_floats(keys))
        return y > 0 if strict else y >= 0

    rising = direction > 0
    # the end of the line where the decision holds if it holds anywhere
    far = np.where(rising, KEY_LIMIT, -KEY_LIMIT).astype(np.int64)
    near = -far
    never = ~holds(far)
    always = holds(near)
    lo, hi = near.copy(), far.copy()  # not holds(lo), holds(hi) unless never or always
    for _ in range(34):  # 2 * KEY_LIMIT < 2^33
        mid = (lo + hi) // 2
        ok = holds(mid)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    edge = keys_to_floats(hi)  # the first value, from ``near``, where it holds
    inf = np.float32(np.inf)
    low = np.where(rising, edge, -inf).astype(np.float32)
    high = np.where(rising, inf, edge).astype(np.float32)
    low = np.where(always, -inf, np.where(never, inf, low)).astype(np.float32)
    high = np.where(always, inf, np.where(never, -inf, high)).astype(np.float32)
    return low, high
