"""QONNX ``Quant`` (Brevitas' multi-bit quantizer) in standard ONNX, as QONNX defines it.

``Quant(x, scale, zeropt, bitwidth; signed, narrow, rounding_mode)``:

    q = x / scale + zeropt
    q = clip(q, min_int, max_int)        # before rounding
    q = round(q)                          # ROUND: half to even (ONNX Round), CEIL, FLOOR
    y = (q - zeropt) * scale

with ``min_int``/``max_int`` those of a ``bitwidth``-bit integer (signed: ``-2^(b-1)``, or
``-2^(b-1) + 1`` when narrow, up to ``2^(b-1) - 1``; unsigned: 0 up to ``2^b - 1``, or
``2^b - 2`` when narrow). A 1-bit signed ``Quant`` is bipolar: ``q >= 0 ? 1 : -1``. Every step
is one float32 ONNX op, so ONNX Runtime, TVM and QONNX's numpy reference round alike.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import BnnError

ROUNDING = {"ROUND": "Round", "CEIL": "Ceil", "FLOOR": "Floor"}


BINARIZER_CONSTANTS = {"bnn_zero": 0.0, "bnn_one": 1.0, "bnn_minus_one": -1.0}


def add_binarizer_constants(model: onnx.ModelProto) -> None:
    """The scalar initializers ``binarizer_nodes`` reads, added once."""
    present = {i.name for i in model.graph.initializer}
    model.graph.initializer.extend(numpy_helper.from_array(np.array(value, np.float32), name)
                                   for name, value in BINARIZER_CONSTANTS.items() if name not in present)


def binarizer_nodes(x: str, out: str, name: str) -> list:
    """``out = Where(x >= 0, 1, -1)``, this project's binarizer, as ONNX nodes (the Where named
    ``name``; the constants come from ``add_binarizer_constants``)."""
    zero, one, minus_one = BINARIZER_CONSTANTS
    return [helper.make_node("GreaterOrEqual", [x, zero], [f"{out}_ge"], name=f"{name}_ge"),
            helper.make_node("Where", [f"{out}_ge", one, minus_one], [out], name=name)]


def integer_range(signed: bool, narrow: bool, bits: int) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


def expand_quant(node: onnx.NodeProto, constants: dict, path: str):
    """``(nodes, initializers)`` computing ``node``'s output in standard ONNX."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x, scale, zeropt, bitwidth = (list(node.input) + [""] * 4)[:4]
    if bitwidth not in constants or constants[bitwidth].size != 1:
        raise BnnError(f"{path}: Quant node {node.name!r}: its bit width must be a constant scalar")
    bits = float(constants[bitwidth].reshape(()))
    if bits != int(bits) or bits < 1:
        raise BnnError(f"{path}: Quant node {node.name!r}: bit width {bits:g} is not a positive integer")
    mode = attrs.get("rounding_mode", b"ROUND")
    mode = (mode.decode() if isinstance(mode, bytes) else mode).upper()
    if mode not in ROUNDING:
        raise BnnError(f"{path}: Quant node {node.name!r}: rounding mode {mode!r} (known: {', '.join(ROUNDING)})")
    signed, narrow = bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0))
    out, name = node.output[0], node.name or node.output[0]

    def t(suffix: str) -> str:
        return f"{out}_bnn_{suffix}"

    nodes = [helper.make_node("Div", [x, scale], [t("scaled")], name=f"{name}_div"),
             helper.make_node("Add", [t("scaled"), zeropt], [t("shifted")], name=f"{name}_add")]
    initializers = []
    if int(bits) == 1 and signed:  # the binarizer's constants: expand_qonnx adds them
        nodes += binarizer_nodes(t("shifted"), t("rounded"), f"{name}_bipolar")
    else:
        low, high = integer_range(signed, narrow, int(bits))
        initializers += [numpy_helper.from_array(np.array(low, np.float32), t("low")),
                         numpy_helper.from_array(np.array(high, np.float32), t("high"))]
        nodes += [helper.make_node("Max", [t("shifted"), t("low")], [t("above")], name=f"{name}_max"),
                  helper.make_node("Min", [t("above"), t("high")], [t("clipped")], name=f"{name}_min"),
                  helper.make_node(ROUNDING[mode], [t("clipped")], [t("rounded")], name=f"{name}_round")]
    nodes += [helper.make_node("Sub", [t("rounded"), zeropt], [t("unshifted")], name=f"{name}_sub"),
              helper.make_node("Mul", [t("unshifted"), scale], [out], name=name)]
    return nodes, initializers
