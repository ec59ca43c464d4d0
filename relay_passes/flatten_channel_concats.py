"""Join nested concats along one axis into one: ``concat(concat(a, b), c)`` -> ``concat(a, b, c)``.

A DenseNet block concatenates each layer's output onto the previous concatenation, so the
``k``-th concat copies all ``k`` earlier parts again: quadratic copying over a block. Once
``FoldChannelOpsIntoPack`` packs each layer's input from the parts themselves, the inner
concats are read only by the next concat; joined into one, the block's parts are copied once.
A concat is the same values in the same order however it is nested, so nothing changes but
the copies. Only an inner concat nothing else reads is joined (otherwise it is computed anyway).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .common import PassLog, RuleContext, function_rule_pass, op_name, use_counts


def concat_fields(ctx: RuleContext, expr):
    """``(fields, axis)`` of a concat whose operand is a tuple expression, else None."""
    node = ctx.producer(expr)
    if op_name(node) != "relax.concat":
        return None
    parts = ctx.producer(node.args[0])
    if not isinstance(parts, relax.Tuple):
        return None
    rank = len(node.ty.shape.values)
    return list(parts.fields), int(node.attrs.axis) % rank


def flatten_rule(uses: dict):
    def flatten(ctx: RuleContext, call):
        found = concat_fields(ctx, call)
        if found is None:
            return None
        fields, axis = found
        joined, changed = [], False
        for field in fields:
            inner = concat_fields(ctx, field) if uses.get(field, 0) == 1 else None
            if inner is None or inner[1] != axis:
                joined.append(field)
                continue
            joined.extend(inner[0])
            changed = True
        if not changed:
            return None
        return relax.op.concat(joined, axis=axis)

    return flatten


def flatten_channel_concats(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return function_rule_pass(__name__, lambda func: flatten_rule(use_counts(func)), logs)
