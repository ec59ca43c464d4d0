"""Elementwise float32 functions of one tensor, evaluated exactly or bounded over every input.

A straight-through estimator left in an exported graph computes ``(sign(u) - p) + p`` where
``u`` and ``p`` are elementwise functions of one tensor ``r`` (Bi-Real's piecewise polynomial is
built from masks, ``Less -> Cast``, products and sums). Whether the estimator equals ``sign(u)``
depends on the values ``p`` takes, in float32, over *every* float32 ``r``. ``Elementwise`` holds
such a function as a small DAG and answers two questions about it:

* ``evaluate(r)``: the exact float32 results for given inputs, rounded once per op as ONNX
  Runtime's elementwise kernels round (numpy's float32 ops do the same);
* ``bound(lo, hi)``: for each input interval ``[lo, hi]``, an interval holding every non-NaN
  result, and whether a NaN is possible, by interval arithmetic rounded outwards to float32.

``for_all_inputs`` combines them into a proof over all 2^32 float32 inputs: intervals that the
bounds decide are done, undecided ones are halved (in the order of the float32 values), and
those with few enough values are evaluated value by value. Only ops whose float32 result is
correctly rounded in both engines are accepted (no ``exp``/``tanh``, which ONNX Runtime
approximates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

BINARY = {"add", "subtract", "multiply", "divide", "maximum", "minimum"}
UNARY = {"negative", "abs", "sign"}
COMPARE = {"less", "less_equal", "greater", "greater_equal", "equal"}
# the ops named as Relax names them (relax.<op>); "cast_float" (bool or float32 -> float32) is not
RELAX_NAMED = BINARY | UNARY | COMPARE | {"clip", "where"}


@dataclass(frozen=True)
class Node:
    """One op: ``op`` on the nodes ``args`` (indices of earlier nodes); ``value``: a constant's
    value or a clip's ``(lo, hi)``."""

    op: str  # "input", "const", "cast_float" or one of RELAX_NAMED
    args: tuple[int, ...] = ()
    value: object = None


@dataclass
class Bounds:
    """Per interval: every non-NaN result lies in ``[lo, hi]`` (``lo > hi``: none does), and
    ``nan`` says whether a NaN can occur. Comparisons hold 0/1."""

    lo: np.ndarray
    hi: np.ndarray
    nan: np.ndarray

    @property
    def empty(self) -> np.ndarray:
        return self.lo > self.hi


@dataclass
class Elementwise:
    nodes: list[Node] = field(default_factory=list)

    def add(self, op: str, *args: int, value=None) -> int:
        self.nodes.append(Node(op, tuple(args), value))
        return len(self.nodes) - 1

    def split_points(self) -> list[float]:
        """The constants the function compares or clips against: its pieces' ends."""
        points = {0.0}
        for node in self.nodes:
            if node.op in COMPARE:
                points.update(float(self.nodes[a].value) for a in node.args if self.nodes[a].op == "const")
            if node.op == "clip":
                points.update(float(v) for v in node.value if np.isfinite(v))
        return sorted(points)

    def evaluate(self, r: np.ndarray) -> list[np.ndarray]:
        """Every node's float32 value at the inputs ``r``."""
        values: list[np.ndarray] = []
        with np.errstate(all="ignore"):
            for node in self.nodes:
                values.append(_EXACT[node.op](node, *(values[a] for a in node.args), r=r))
        return values

    def bound(self, lo: np.ndarray, hi: np.ndarray) -> list[Bounds]:
        """Every node's bounds over the input intervals ``[lo, hi]`` (float32 values)."""
        values: list[Bounds] = []
        with np.errstate(all="ignore"):
            for node in self.nodes:
                if node.op == "input":
                    values.append(Bounds(lo.astype(np.float64), hi.astype(np.float64), np.zeros(lo.shape, bool)))
                else:
                    values.append(_BOUND[node.op](node, *(values[a] for a in node.args), shape=lo.shape))
        return values


# Exact float32 evaluation -----------------------------------------------------------------------
def _const(node, *, r):
    return np.full(r.shape, node.value, np.float32)


_EXACT: dict[str, Callable] = {
    "input": lambda node, *, r: r.astype(np.float32),
    "const": _const,
    "add": lambda node, a, b, *, r: np.add(a, b, dtype=np.float32),
    "subtract": lambda node, a, b, *, r: np.subtract(a, b, dtype=np.float32),
    "multiply": lambda node, a, b, *, r: np.multiply(a, b, dtype=np.float32),
    "divide": lambda node, a, b, *, r: np.divide(a, b, dtype=np.float32),
    "maximum": lambda node, a, b, *, r: np.maximum(a, b),
    "minimum": lambda node, a, b, *, r: np.minimum(a, b),
    "negative": lambda node, a, *, r: np.negative(a),
    "abs": lambda node, a, *, r: np.abs(a),
    "sign": lambda node, a, *, r: np.sign(a),
    "cast_float": lambda node, a, *, r: a.astype(np.float32),
    "clip": lambda node, a, *, r: np.minimum(np.maximum(a, np.float32(node.value[0])), np.float32(node.value[1])),
    "where": lambda node, c, a, b, *, r: np.where(c != 0, a, b).astype(np.float32),
    "less": lambda node, a, b, *, r: (a < b).astype(np.float32),
    "less_equal": lambda node, a, b, *, r: (a <= b).astype(np.float32),
    "greater": lambda node, a, b, *, r: (a > b).astype(np.float32),
    "greater_equal": lambda node, a, b, *, r: (a >= b).astype(np.float32),
    "equal": lambda node, a, b, *, r: (a == b).astype(np.float32),
}


# Bounds ---------------------------------------------------------------------------------------------
def _outwards(lo: np.ndarray, hi: np.ndarray, nan: np.ndarray) -> Bounds:
    """Bounds of the float32 rounding of every real result in ``[lo, hi]`` (float64 values,
    themselves within one float64 rounding of the real ends): rounding is monotone, so stepping
    one float64 ulp outwards and rounding to float32 encloses it; past float32's range the
    results round to +-inf, as float32 ops do."""
    empty = lo > hi
    lo32 = np.nextafter(lo, -np.inf).astype(np.float32).astype(np.float64)
    hi32 = np.nextafter(hi, np.inf).astype(np.float32).astype(np.float64)
    return Bounds(np.where(empty, np.inf, lo32), np.where(empty, -np.inf, hi32), nan)


def _corners(a: Bounds, b: Bounds, op) -> Bounds:
    """Bounds of ``op`` (monotone in each argument on intervals that do not hold a pole) from the
    four corners; a corner that is NaN (``0 * inf``, ``inf - inf``) makes NaN possible, and the
    other corners bound the non-NaN results (for ``inf - inf`` the neighbouring corners are
    infinite already; for ``0 * inf`` see ``_zero_times_infinity``)."""
    pairs = [(a.lo, b.lo), (a.lo, b.hi), (a.hi, b.lo), (a.hi, b.hi)]
    corners = np.stack([op(x, y) for x, y in pairs])
    some_nan = np.isnan(corners).any(axis=0)
    if op is np.multiply:
        corners = np.stack([_zero_times_infinity(c, x, y, a, b) for c, (x, y) in zip(corners, pairs)])
    all_nan = np.isnan(corners).all(axis=0)
    lo = np.where(all_nan, np.inf, np.nanmin(np.where(np.isnan(corners), np.inf, corners), axis=0))
    hi = np.where(all_nan, -np.inf, np.nanmax(np.where(np.isnan(corners), -np.inf, corners), axis=0))
    empty = a.empty | b.empty
    return _outwards(np.where(empty, np.inf, lo), np.where(empty, -np.inf, hi), a.nan | b.nan | some_nan | all_nan)


def _zero_times_infinity(corner, x, y, a: Bounds, b: Bounds):
    """A ``0 * inf`` corner is NaN, but beside it, a large finite value times 0 is 0: the corner
    stands for 0 when the infinite side's interval holds a finite value (the other neighbour,
    ``inf`` times a small non-zero value, is another corner's infinity already)."""
    has_finite = lambda v: (v.lo < v.hi) | np.isfinite(v.lo)  # noqa: E731 (not empty, not one infinity)
    infinite_a = np.isinf(x) & (y == 0) & has_finite(a)
    infinite_b = np.isinf(y) & (x == 0) & has_finite(b)
    return np.where(np.isnan(corner) & (infinite_a | infinite_b), 0.0, corner)


def _divide(node, a: Bounds, b: Bounds, *, shape) -> Bounds:
    pole = (b.lo <= 0) & (b.hi >= 0)
    result = _corners(a, b, np.divide)
    return Bounds(np.where(pole, -np.inf, result.lo), np.where(pole, np.inf, result.hi), result.nan | pole)


def _monotone(f):
    """A non-decreasing unary op: its ends' images (NaN stays possible)."""
    return lambda node, a, *, shape: Bounds(np.where(a.empty, np.inf, f(node, a.lo)),
                                            np.where(a.empty, -np.inf, f(node, a.hi)), a.nan.copy())


def _negative(node, a: Bounds, *, shape) -> Bounds:
    return Bounds(-a.hi, -a.lo, a.nan.copy())


def _abs(node, a: Bounds, *, shape) -> Bounds:
    straddles = (a.lo < 0) & (a.hi > 0)
    lo = np.where(straddles, 0.0, np.minimum(np.abs(a.lo), np.abs(a.hi)))
    hi = np.maximum(np.abs(a.lo), np.abs(a.hi))
    return Bounds(np.where(a.empty, np.inf, lo), np.where(a.empty, -np.inf, hi), a.nan.copy())


def _compare(holds):
    """0/1 bounds of a comparison: 1 where it holds for every pair of values, 0 where for none.
    A NaN operand compares false."""

    def bound(node, a: Bounds, b: Bounds, *, shape) -> Bounds:
        always, never = holds(a, b)
        maybe_nan = a.nan | b.nan
        always = always & ~maybe_nan & ~a.empty & ~b.empty
        never = never | a.empty | b.empty
        return Bounds(np.where(always, 1.0, 0.0), np.where(never, 0.0, 1.0), np.zeros(shape, bool))

    return bound


def _where(node, c: Bounds, a: Bounds, b: Bounds, *, shape) -> Bounds:
    take_a, take_b = c.lo > 0, c.hi <= 0
    lo = np.where(take_a, a.lo, np.where(take_b, b.lo, np.minimum(a.lo, b.lo)))
    hi = np.where(take_a, a.hi, np.where(take_b, b.hi, np.maximum(a.hi, b.hi)))
    nan = np.where(take_a, a.nan, np.where(take_b, b.nan, a.nan | b.nan))
    return Bounds(lo, hi, nan)


def _minmax(op):
    def bound(node, a: Bounds, b: Bounds, *, shape) -> Bounds:
        empty = a.empty | b.empty
        return Bounds(np.where(empty, np.inf, op(a.lo, b.lo)), np.where(empty, -np.inf, op(a.hi, b.hi)), a.nan | b.nan)

    return bound


_BOUND: dict[str, Callable] = {
    "const": lambda node, *, shape: Bounds(np.full(shape, float(node.value)), np.full(shape, float(node.value)),
                                           np.zeros(shape, bool)),
    "add": lambda node, a, b, *, shape: _corners(a, b, np.add),
    "subtract": lambda node, a, b, *, shape: _corners(a, _negative(node, b, shape=shape), np.add),
    "multiply": lambda node, a, b, *, shape: _corners(a, b, np.multiply),
    "divide": _divide,
    "maximum": _minmax(np.maximum),
    "minimum": _minmax(np.minimum),
    "negative": _negative,
    "abs": _abs,
    "sign": _monotone(lambda node, v: np.sign(v)),
    "cast_float": lambda node, a, *, shape: a,
    "clip": _monotone(lambda node, v: np.clip(v, node.value[0], node.value[1])),
    "where": _where,
    "less": _compare(lambda a, b: (a.hi < b.lo, a.lo >= b.hi)),
    "less_equal": _compare(lambda a, b: (a.hi <= b.lo, a.lo > b.hi)),
    "greater": _compare(lambda a, b: (a.lo > b.hi, a.hi <= b.lo)),
    "greater_equal": _compare(lambda a, b: (a.lo >= b.hi, a.hi < b.lo)),
    "equal": _compare(lambda a, b: ((a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo), (a.hi < b.lo) | (b.hi < a.lo))),
}


# Proofs over every float32 input ------------------------------------------------------------------
INF_ORDINAL = 0x7F800000  # the ordinal of +inf: float32 values in order are -INF_ORDINAL .. INF_ORDINAL


def to_ordinal(values: np.ndarray) -> np.ndarray:
    """float32 -> int64 such that the order of values is the order of ordinals (-0 and +0 are 0)."""
    bits = np.asarray(values, np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def from_ordinal(ordinals: np.ndarray) -> np.ndarray:
    ordinals = np.asarray(ordinals, np.int64)
    bits = np.where(ordinals < 0, (-ordinals) | 0x80000000, ordinals)
    return bits.astype(np.uint32).view(np.float32)


@dataclass
class Outcome:
    """What ``for_all_inputs`` found: ``holds`` over every non-NaN float32 input, or a
    ``counterexample``; ``nan_from``: the smallest ``|r|`` at which the checked function may
    be NaN (None: nowhere), reported because the float graph itself then yields NaN."""

    holds: bool
    counterexample: float | None = None
    nan_from: float | None = None
    undecided: bool = False  # the search gave up (too many pieces): neither proven nor refuted


EXHAUSTIVE_PIECE = 1 << 16  # a piece with at most this many float32 values is evaluated value by value
MAX_VALUES = 1 << 24  # values evaluated one by one, in all, before the search gives up
MAX_ROUNDS = 80


def for_all_inputs(function: Elementwise, decide_bounds, decide_values) -> Outcome:
    """Whether a property holds at every float32 input (NaN excluded) of ``function``.

    ``decide_bounds(bounds) -> (holds, may_be_nan, always_nan)``: per interval, whether the node
    bounds prove the property on all of it, and whether the checked function may be, or is
    everywhere, NaN there; ``decide_values(values) -> (holds, nan)``: the same per single input,
    from exact values. Intervals start at the
    function's comparison and clip points (each point alone, and the open gaps between them)."""
    points = to_ordinal(np.array(function.split_points(), np.float32))
    ends = np.unique(np.concatenate([[-INF_ORDINAL, INF_ORDINAL], points]))
    singles = np.stack([ends, ends], axis=1)
    gaps = np.stack([ends[:-1] + 1, ends[1:] - 1], axis=1)
    pieces = np.concatenate([singles, gaps[gaps[:, 0] <= gaps[:, 1]]])
    nan_from, spent = np.inf, 0
    for _ in range(MAX_ROUNDS):
        if not len(pieces):
            return Outcome(True, nan_from=None if np.isinf(nan_from) else float(nan_from))
        lo, hi = from_ordinal(pieces[:, 0]), from_ordinal(pieces[:, 1])
        holds, may_be_nan, always_nan = decide_bounds(function.bound(lo, hi))
        nan_from = min(nan_from, _nearest_zero(lo[holds & always_nan], hi[holds & always_nan]))
        pending = pieces[~holds | (may_be_nan & ~always_nan)]  # the latter: halved to find where NaN starts
        small = pending[:, 1] - pending[:, 0] + 1 <= EXHAUSTIVE_PIECE
        if np.any(small):
            r = from_ordinal(np.concatenate([np.arange(a, b + 1) for a, b in pending[small]]))
            spent += r.size
            ok, nan_here = decide_values(function.evaluate(r))
            if not np.all(ok):
                return Outcome(False, counterexample=float(r[np.argmin(ok)]))
            if np.any(nan_here):
                nan_from = min(nan_from, float(np.min(np.abs(r[nan_here]))))
        if spent > MAX_VALUES:
            return Outcome(False, undecided=True)
        pieces = _halves(pending[~small])
    return Outcome(False, undecided=True)


def _nearest_zero(lo: np.ndarray, hi: np.ndarray) -> float:
    if not lo.size:
        return np.inf
    straddles = (lo <= 0) & (hi >= 0)
    return float(np.min(np.where(straddles, 0.0, np.minimum(np.abs(lo), np.abs(hi)))))


def _halves(pieces: np.ndarray) -> np.ndarray:
    middle = (pieces[:, 0] + pieces[:, 1]) // 2
    return np.concatenate([np.stack([pieces[:, 0], middle], 1), np.stack([middle + 1, pieces[:, 1]], 1)])
