"""A vectorisable float32 ``erf`` for the CPU float kernels (GELU, ONNX ``Erf``).

TVM lowers ``tir.erf`` on LLVM targets to a call of the C library's ``erff`` per element: a
vectorised GELU loop becomes 16 scalar calls per vector (BiBERT's FFN GELU, 64 x 1024 values,
took 0.24 ms of a 0.6 ms layer). ``erf_f32`` is the same function in plain float32 arithmetic,
which LLVM vectorises:

* ``|y| < 1``: ``y + y * R(y^2)``, ``R`` a degree-7 polynomial; ``1 <= |y| < 2``: a degree-9
  polynomial in ``|y| - 1.5`` (coefficients rounded to float32 one at a time, the later ones
  refitted);
* ``2 <= |y| < ERF_ONE``: ``1 - exp(Q(|y|))``, ``Q`` a degree-7 fit of ``log(erfc)``, ``exp``
  by ``2^n * P(r)`` (``n`` put into the exponent bits), the result capped at ``1 - 2^-24``;
* ``|y| >= ERF_ONE``: exactly ``±1``; NaN in, NaN out (it takes the first branch).

Measured over every float32 in ``[2^-12, 4]`` against the correctly rounded value
(``tests/test_float_erf.py`` and ``tools/erf_accuracy.py``): at most 1 ulp off, as glibc's
``erff`` (which the default lowering calls) is. Not bit-identical to it: see docs/exactness.md.

What a binarizer after a GELU sees is identical to the default lowering, for every float32
input: ``erf_f32(y)`` has the sign of ``y`` (``±0`` at ``±0``), and it is ``±1`` exactly where the
correctly rounded ``erf`` -- and glibc's ``erff`` -- are, ``|y| >= ERF_ONE = 3.919206`` (the first
float32 whose ``erf`` rounds to 1). So ``GELU(x) = x * (0.5 + erf(x / sqrt 2) * 0.5)`` is 0 for the
same ``x`` (``erf = -1`` or an underflow of ``x * 0.5``), NaN for the same (``-inf``, NaN), and
otherwise has the sign of ``x``, in both. (ONNX Runtime's MLAS ``erf`` reaches 1 at 3.9191902,
66 float32 steps earlier: there ONNX Runtime and TVM's own lowering already disagree.)

``BNN_LIBM_ERF=1`` keeps TVM's ``erff`` calls (the default lowering's values, scalar).
"""

from __future__ import annotations

import os

import numpy as np
import tvm
from tvm import tirx

ERF_ONE = float(np.int32(1081791557).view(np.float32))  # 3.919206: erf rounds to 1 from here on (glibc, exact)
SPLIT = 2.0  # the mid polynomial below, 1 - exp(Q) from here
# erf(y) / y - 1 as a polynomial in t = y * y on [0, 1]
R_COEFFS = (0.12837916612625122, -0.3761262893676758, 0.11283627897500992, -0.0268560778349638,
            0.00519415270537138, -0.0008088098838925362, 8.375915058422834e-05, -1.3859042837793822e-06)
# erf(1.5 + s) on s in [-0.5, 0.5]
MID_COEFFS = (0.9661051630973816, 0.11893028765916824, -0.1783975064754486, 0.13875213265419006,
              -0.04455788433551788, -0.014869763515889645, 0.019068153575062752, -0.004706493578851223,
              -0.0018722640816122293, 0.0015489098150283098)
# log(erfc(y)) on [2, ERF_ONE]
Q_COEFFS = (-0.00660900492221117, -1.1101574897766113, -0.6570741534233093, -0.09208022058010101,
            0.018465556204319, -0.002527519827708602, 0.00020859135838691145, -7.788768925820477e-06)
EXP_COEFFS = (1.0, 1.0, 0.5, 1 / 6, 1 / 24, 1 / 120, 1 / 720)  # exp(r), |r| <= ln2 / 2
LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125  # 12 significant bits: n * LN2_HI is exact for |n| < 2^11
LN2_LO = 1.4286068203094172e-06
BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))


def enabled() -> bool:
    return os.environ.get("BNN_LIBM_ERF", "0") in ("0", "", "false", "no")


def _f(value: float):
    return tirx.const(float(np.float32(value)), "float32")


def _horner(x, coeffs):
    acc = _f(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + _f(c)
    return acc


def _lanes_suffix(expr) -> str:
    """``"x16"`` for a 16-lane vector expression (as TVM's dtype strings write it), ``""`` for a scalar."""
    ty = getattr(expr, "ty", None)  # (TVM 0.27 PrimExprs: ``expr.ty.dtype``; older: ``expr.dtype``)
    lanes = tvm.DataType(str(getattr(ty, "dtype", None) if ty is not None else expr.dtype)).lanes
    return f"x{lanes}" if lanes > 1 else ""


def erf_small_f32(y):
    """``erf_f32``'s branch for ``|y| < 1`` (and NaN): ``y + y * R(y^2)``, the same expression."""
    return y + y * _horner(y * y, R_COEFFS)


def erf_f32(y):
    """``erf(y)`` of a float32 PrimExpr, vectorisable (see the module doc)."""
    a = tirx.abs(y)
    negative = y < _f(0.0)
    small = erf_small_f32(y)
    mid = _horner(a - _f(1.5), MID_COEFFS)  # (a - 1.5 is exact for a in [0.75, 3])
    b = tirx.min(a, _f(ERF_ONE))  # finite for every input (the branch is not taken beyond)
    q = _horner(b, Q_COEFFS)
    n = tirx.floor(q * _f(LOG2E) + _f(0.5))
    r = (q - n * _f(LN2_HI)) - n * _f(LN2_LO)
    suffix = _lanes_suffix(y)
    scale = tirx.reinterpret(f"float32{suffix}", tirx.shift_left(tirx.Cast(f"int32{suffix}", n) + 127, 23))
    tail = tirx.min(_f(1.0) - _horner(r, EXP_COEFFS) * scale, _f(BELOW_ONE))
    one = _f(1.0) if not suffix else tirx.Broadcast(_f(1.0), int(suffix[1:]))
    large = tirx.Select(a >= _f(SPLIT), tirx.Select(a >= _f(ERF_ONE), one, tail), mid)
    # NaN compares false everywhere: it takes ``small`` (NaN); -0 stays -0 there
    return tirx.Select(a >= _f(1.0), tirx.Select(negative, -large, large), small)


def _te_erf(x):
    from tvm import te

    return te.compute(x.shape, lambda *i: erf_f32(x(*i)), name="T_erf")


def legalize_map() -> dict:
    """``LegalizeOps`` rules for ``relax.erf`` and ``relax.nn.gelu`` on float32 with ``erf_f32``:
    the same expressions as TVM's own rules (``x * (0.5 + erf(x * sqrt(1/2)) * 0.5)``), other dtypes
    by TVM's rules. Empty when ``BNN_LIBM_ERF`` is set."""
    if not enabled():
        return {}
    from tvm import te
    from tvm.ir import Op

    default_erf = Op.get("relax.erf").get_attr("FLegalize")
    default_gelu = Op.get("relax.nn.gelu").get_attr("FLegalize")

    def erf_rule(bb, call):
        if str(call.args[0].ty.dtype) != "float32":
            return default_erf(bb, call)
        return bb.call_te(_te_erf, call.args[0], primfunc_name_hint="erf")

    def gelu_rule(bb, call):
        if str(call.args[0].ty.dtype) != "float32":
            return default_gelu(bb, call)

        def te_gelu(x):
            half = tirx.const(0.5, "float32")
            arg = te.compute(x.shape, lambda *i: x(*i) * tirx.const(0.5**0.5, "float32"), name="T_multiply")
            erf = _te_erf(arg)
            scaled = te.compute(x.shape, lambda *i: erf(*i) * half, name="T_multiply")
            inner = te.compute(x.shape, lambda *i: half + scaled(*i), name="T_add")
            return te.compute(x.shape, lambda *i: x(*i) * inner(*i), name="T_multiply")

        return bb.call_te(te_gelu, call.args[0], primfunc_name_hint="gelu")

    return {"relax.erf": erf_rule, "relax.nn.gelu": gelu_rule}
