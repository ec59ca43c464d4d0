"""Rewrite the float ops that have a hand-written CPU kernel into calls of it.

Max pools (``schedules.max_pool``: no padded copy of the input; max is exact in any order),
matmuls with a constant weight (``schedules.float_matmul``: the weight blocked at compile time;
same sums, same order), LayerNorms (``schedules.layer_norm``: several rows' sums as one vector,
each in its order) and chains of elementwise ops around ``erf``, a GELU decomposed or not
(``schedules.float_elementwise``: one pass over memory, each op's float32 rounding kept) become ``call_tir`` of kernels that are already scheduled for the
target's vector width (``lanes32``), so ``schedules.float_ops`` leaves them alone. A no-op with
``BNN_FLOAT_SCHEDULES=0`` (``schedules.float_ops.enabled``) and on a module already rewritten.

A pass of the target-prepare phase (``pipeline.prepare_passes``); ``plans`` receives each
kernel's plan. No log: the ops compute as the float graph does.
"""

from __future__ import annotations

import tvm

from bnn_tvm.schedules import float_ops
from bnn_tvm.schedules.float_elementwise import rewrite_erf_chains
from bnn_tvm.schedules.layer_norm import rewrite_layer_norms
from bnn_tvm.schedules.float_matmul import rewrite_matmuls
from bnn_tvm.schedules.max_pool import rewrite_max_pools

from .common import PassLog, pass_name


def hand_written_float_ops(logs: list[PassLog] | None = None, lanes32: int = 4,
                           plans: dict | None = None) -> tvm.transform.Pass:
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not float_ops.enabled():
            return mod
        mod = rewrite_matmuls(rewrite_max_pools(mod, lanes32, plans), lanes32, plans)
        return rewrite_layer_norms(rewrite_erf_chains(mod, lanes32, plans), lanes32, plans)

    return tvm.transform.module_pass(transform, opt_level=0, name=pass_name(__name__))
