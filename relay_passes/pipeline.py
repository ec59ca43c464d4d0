"""The binarization pipeline: each step one named pass, in the order the rewrites depend on."""

from __future__ import annotations

import tvm
from tvm import relax

from .common import PassLog, rule_pass
from .fold_thresholds import fold_threshold
from .fuse_binary_conv2d import fuse_binary_conv2d
from .fuse_binary_dense import fuse_binary_dense
from .lower_binarizers import lower_binarizer


def binarize(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    """Fuse every recognised binary layer; everything else stays on TVM's float path."""
    return tvm.transform.Sequential(
        [
            relax.transform.FoldConstant(),  # binarized weights, transposed Gemm weights -> constants
            rule_pass("LowerBinarizers", lower_binarizer, logs),
            rule_pass("FuseBinaryConv2d", fuse_binary_conv2d, logs),
            rule_pass("FuseBinaryDense", fuse_binary_dense, logs),
            rule_pass("FoldThresholds", fold_threshold, logs),
            relax.transform.DeadCodeElimination(),
        ],
        name="BinarizeForBitserial",
    )
