"""TIR schedules of the binary operators, per target family, and where they are applied.

``schedule_module(mod, spec)`` is called by the compiler on the Relax module after the
binarization passes and before ``tvm.compile``: it schedules every PrimFunc tagged ``bnn.op``
for the target. Untagged (float) functions are left to TVM's default pipeline.
"""

from __future__ import annotations


def schedule_module(mod, spec):
    """Schedule the binary kernels of ``mod`` for ``spec`` (a ``targets.TargetSpec``).

    Nothing is scheduled yet: kernels run as TVM lowers their compute (serial loops).
    """
    return mod
