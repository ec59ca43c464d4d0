"""The binarization pipeline: each step one named pass, in the order the rewrites depend on."""

from __future__ import annotations

import tvm
from tvm import relax

from .cancel_layout_transposes import cancel_layout_transposes
from .common import PassLog, either_rule, rule_pass
from .fold_float_epilogues import fold_float_epilogues
from .flatten_channel_concats import flatten_channel_concats
from .fold_channel_ops_into_pack import fold_channel_ops_into_pack
from .fold_float_tables import fold_float_tables
from .fold_residual_add import fold_residual_add
from .fold_thresholds import fold_threshold
from .fuse_binary_attention import fuse_attention_context, fuse_binary_attention
from .fuse_binary_conv2d import fuse_binary_conv2d
from .fuse_binary_dense import fuse_binary_dense
from .fold_zero_pad_into_conv import fold_zero_pad_into_conv
from .fuse_binary_maxpool import fuse_binary_maxpool
from .lift_activation_scale import lift_activation_scale
from .lift_conv1d import lift_conv1d
from .lift_token_matmul import lift_token_matmul
from .lower_binarizers import lower_binarizer
from .lower_multibit import lower_multibit
from .lower_sign import lower_sign
from .lower_straight_through import lower_straight_through
from .sink_channel_transposes import sink_channel_transposes
from .split_channel_ops_over_concat import split_channel_ops_over_concat
from .split_ternary_sign import split_ternary_sign

MAX_ROUNDS = 256  # Sign rounds: about one per layer of a chain of Sign layers


def sign_rounds(logs: list[PassLog] | None, fusions, sign_zero: str = "exact") -> tvm.transform.Pass:
    """``LowerSign``, ``SplitTernarySign`` and the ``fusions`` again and again until a round
    rewrites nothing. A ``Sign`` can only be proven binary once the layer before it is a
    binary kernel, so a ``Sign`` whose layer is fused in this round waits for the next; a chain
    of ``Sign`` layers (BinaryNet's torch.sign) takes a round each. When only waiting ``Sign``s
    are left (their layer did not fuse after all), one round splits them without waiting."""

    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        wait = True
        for _ in range(MAX_ROUNDS):
            round_logs: list[PassLog] = []
            mod = tvm.transform.Sequential([
                rule_pass("LowerSign", lower_sign(sign_zero), round_logs),
                rule_pass("SplitTernarySign", split_ternary_sign(wait), round_logs),  # the Signs LowerSign kept float
                *fusions(round_logs),
            ])(mod)
            if logs is not None:
                logs.extend(round_logs)
            if any(log.changed for log in round_logs):
                wait = True
            elif wait:
                wait = False
            else:
                break
        return mod

    return tvm.transform.module_pass(transform, opt_level=0, name="SignRounds")


def binarize(logs: list[PassLog] | None = None, float_epilogues: bool = True, sign_zero: str = "exact") -> tvm.transform.Pass:
    """Fuse every recognised binary layer; everything else stays on TVM's float path.

    First, 1-D convs and matmuls on ``[N, T, C]`` tokens become the 2-D forms the fusions
    know (a one-row conv2d, a dense over the rows). Then binarizers become packed bits, the
    layers reading them binary kernels, and ``Sign`` rounds (``sign_rounds``) follow. ``float_epilogues``: float ops
    after a binary kernel become its epilogue (LLVM targets), a residual add after it too (and
    the per-channel ops after it, also when a channel concat of such kernels comes between);
    otherwise lookup tables where small. Last, identical kernel calls on the same tensors run
    once: a model whose binary layers each carry their own (parameter-free) input quantizer
    has one binarizer per layer, so a tensor read by two binary layers is packed twice.
    ``sign_zero``: the ``Sign(0)`` convention (``conventions.SIGN_ZERO``).
    """

    def fusions(to=logs):
        return [
            rule_pass("FuseBinaryConv2d", fuse_binary_conv2d, to),
            rule_pass("FuseBinaryDense", fuse_binary_dense, to),
            rule_pass("FuseBinaryMaxPool", fuse_binary_maxpool, to),
        ]

    return tvm.transform.Sequential(
        [
            relax.transform.FoldConstant(),  # binarized weights, transposed Gemm weights -> constants
            # a training-time estimator (sign(x) - p) + p is a Sign wherever p provably fits: the Sign passes take it
            rule_pass("LowerStraightThrough", lower_straight_through, logs),
            relax.transform.DeadCodeElimination(),  # the estimator's p, the Sign it replaced
            # tf2onnx's Transpose(NHWC) -> binarizer -> Pad -> Transpose(NCHW): the binarizer before its conv
            rule_pass("CancelLayoutTransposes", cancel_layout_transposes, logs),
            relax.transform.DeadCodeElimination(),
            rule_pass("FoldZeroPadIntoConv", fold_zero_pad_into_conv, logs),  # Sign(Pad(x, 0)): the conv's padding
            # XNOR-Net's conv(beta * Sign(x)): the conv on Sign(x) is binary, beta scales its output
            rule_pass("LiftActivationScale", lift_activation_scale, logs),
            rule_pass("LiftConv1d", lift_conv1d, logs),
            # one walk: a point MLP's batch norm between transposes moves onto the rows a matmul was just lifted to
            rule_pass("LiftTokenMatmul", either_rule(lift_token_matmul, sink_channel_transposes), logs),
            relax.transform.DeadCodeElimination(),  # a binarizer the token rows replaced: not lowered
            rule_pass("LowerBinarizers", lower_binarizer, logs),
            rule_pass("LowerMultibit", lower_multibit, logs),
            *fusions(),
            sign_rounds(logs, fusions, sign_zero),
            # Sign(Q) Sign(K)^T: after the rounds, so the linears before the Signs are kernels (proofs of non-zero)
            rule_pass("FuseBinaryAttention", fuse_binary_attention, logs),
            # Bi-Attention's P = bool(S / sqrt(d) + mask) as bits, P @ Sign(V) one popcount kernel
            rule_pass("FuseAttentionContext", fuse_attention_context, logs),
            rule_pass("FoldThresholds", fold_threshold, logs),
            relax.transform.DeadCodeElimination(),  # float ops the thresholds replaced are not chain ends
            *(
                [fold_channel_ops_into_pack(logs), relax.transform.DeadCodeElimination(),  # BN(concat) in the packs
                 flatten_channel_concats(logs), relax.transform.DeadCodeElimination(),  # the inner concats joined
                 split_channel_ops_over_concat(logs), relax.transform.DeadCodeElimination(),  # the concat split
                 fold_float_epilogues(logs), relax.transform.DeadCodeElimination(),
                 fold_residual_add(logs), relax.transform.DeadCodeElimination()]
                if float_epilogues
                else []
            ),
            fold_float_tables(logs),
            relax.transform.EliminateCommonSubexpr(),  # after the folds: they look at readers
            relax.transform.DeadCodeElimination(),
        ],
        name="BinarizeForBitserial",
    )
