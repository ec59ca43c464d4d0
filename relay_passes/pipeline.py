"""The binarization pipeline: passes in named phases, composed per target family.

``binarize_passes(family)`` is the whole pipeline for a target family, phase after phase:

* ``lift_passes``: the float graph into the forms the fusions know (estimators as ``Sign``,
  layout transposes cancelled, 1-D convs and token matmuls as 2-D convs and denses);
* ``lower_passes``: binarizers (and k-bit quantizers) as packed bits;
* ``fuse_passes``: the layers reading bits as binary kernels;
* ``sign_rounds``: ONNX ``Sign``s, which need the layer before them fused first;
* ``attention_passes``: attention products of ``Sign``ed heads (after the rounds);
* ``fold_passes(family)``: the float ops after a kernel into it (thresholds; on CPUs float
  epilogues and residual adds; lookup tables);
* ``cleanup_passes``: views between kernels merged, identical kernel calls once, dead bindings gone.

The target-prepare phase (``prepare_passes``: float convs and the hand-written float ops as CPU
kernels) belongs to the same pipeline but runs where the kernels are scheduled
(``schedules.prepare_cpu_kernels``, for the build and the tuner alike): it needs the concrete
target's vector width, and the module ``bnn_tvm.compilation.compiler.lower_onnx`` returns (what ``inspect``
and ``verify`` read) keeps the float ops as the graph has them.

Each pass is the function of the module named as it (``common.rule_pass``); a phase is a list.
"""

from __future__ import annotations

import tvm
from tvm import relax

from bnn_tvm.schedules import float_conv

from .cancel_layout_transposes import cancel_layout_transposes
from .common import PassLog
from .flatten_channel_concats import flatten_channel_concats
from .float_conv_kernels import float_conv_kernels
from .fold_channel_ops_into_pack import fold_channel_ops_into_pack
from .fold_float_epilogues import fold_float_epilogues
from .fold_float_tables import fold_float_tables
from .fold_residual_add import fold_residual_add
from .fold_thresholds import fold_thresholds
from .fold_zero_pad_into_conv import fold_zero_pad_into_conv
from .fuse_attention_context import fuse_attention_context
from .fold_zero_scaled_term import fold_zero_scaled_term
from .fuse_binary_attention import fuse_binary_attention
from .fuse_binary_conv2d import fuse_binary_conv2d
from .fuse_binary_dense import fuse_binary_dense
from .fuse_binary_max_pool import fuse_binary_max_pool
from .fuse_ttq_difference import fuse_ttq_difference
from .hand_written_float_ops import hand_written_float_ops
from .lift_activation_scale import lift_activation_scale
from .lift_conv1d import lift_conv1d
from .lift_token_matmul import lift_token_matmul
from .merge_unit_views import merge_unit_views
from .lower_binarizers import lower_binarizers
from .lower_multibit import lower_multibit
from .lower_scaled_straight_through import lower_scaled_straight_through
from .lower_sign import lower_sign
from .lower_straight_through import lower_straight_through
from .lower_zero_mean_sign import lower_zero_mean_sign
from .split_channel_ops_over_concat import split_channel_ops_over_concat
from .split_ternary_sign import split_ternary_sign

Logs = list[PassLog] | None
MAX_ROUNDS = 256  # Sign rounds: about one per layer of a chain of Sign layers
CPU_FAMILIES = ("x86", "arm")  # kernels compute float epilogues; float convs and some float ops are kernels


def lift_passes(logs: Logs) -> list[tvm.transform.Pass]:
    return [
        # binarized weights, transposed Gemm weights -> constants
        relax.transform.FoldConstant(),
        # FDA's sign(a) + alpha * noise(a) with alpha decayed to 0: sign(a)
        fold_zero_scaled_term(logs),
        # a training-time estimator (sign(x) - p) + p is a Sign wherever p provably fits: the Sign passes take it
        lower_straight_through(logs),
        # XNOR-Net's (beta * sign(x) - p) + p: beta * sign(x), within rounding, for the activation-scale lift
        lower_scaled_straight_through(logs),
        # the estimator's p, the Sign it replaced
        relax.transform.DeadCodeElimination(),
        # tf2onnx's Transpose(NHWC) -> binarizer -> Pad -> Transpose(NCHW): the binarizer before its conv
        cancel_layout_transposes(logs),
        # the transposes that cancelled
        relax.transform.DeadCodeElimination(),
        # XNOR-Net's conv(beta * Sign(x)): the conv on Sign(x) is binary, beta scales its output
        lift_activation_scale(logs),
        # conv1d as a conv2d over one row: the 2-D fusions take it
        lift_conv1d(logs),
        # token matmuls as denses over rows; a point MLP's batch norm between transposes onto those rows
        lift_token_matmul(logs),
        # Sign(Pad(x, 0)), also in a lifted 1-D conv's one-row view: the conv's padding (after the token
        # lift, which would move the unpadded Sign of a transposed token tensor away from the conv)
        fold_zero_pad_into_conv(logs),
        # a binarizer the token rows replaced: not lowered
        relax.transform.DeadCodeElimination(),
    ]


def lower_passes(logs: Logs) -> list[tvm.transform.Pass]:
    return [
        # binarizers -> unpack(pack(x)): later passes see bits
        lower_binarizers(logs),
        # k-bit quantizers (DoReFa, Quant) -> bit planes
        lower_multibit(logs),
    ]


def fuse_passes(logs: Logs) -> list[tvm.transform.Pass]:
    return [
        # conv2d on bits with binary weights -> XNOR-popcount conv
        fuse_binary_conv2d(logs),
        # matmul on bits (also through a flatten) with binary weights -> XNOR-popcount dense
        fuse_binary_dense(logs),
        # max pool on bits -> OR of packed words
        fuse_binary_max_pool(logs),
    ]


def sign_rounds(logs: Logs, sign_zero: str = "exact") -> tvm.transform.Pass:
    """``LowerSign``, ``SplitTernarySign`` and the fusions again and again until a round
    rewrites nothing. A ``Sign`` can only be proven binary once the layer before it is a
    binary kernel, so a ``Sign`` whose layer is fused in this round waits for the next; a chain
    of ``Sign`` layers (BinaryNet's torch.sign) takes a round each. When only waiting ``Sign``s
    are left (their layer did not fuse after all), one round splits them without waiting."""

    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        wait = True
        for _ in range(MAX_ROUNDS):
            round_logs: list[PassLog] = []
            mod = tvm.transform.Sequential([
                # a Sign proven never 0 (or any Sign, with sign_zero "plus") -> a binarizer's bits
                lower_sign(round_logs, sign_zero),
                # the Signs LowerSign kept float: a binary layer on a ternary input as two halves
                split_ternary_sign(round_logs, wait),
                # the layers reading the new bits
                *fuse_passes(round_logs),
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


def attention_passes(logs: Logs) -> list[tvm.transform.Pass]:
    return [
        # Sign(Q) Sign(K)^T: after the rounds, so the linears before the Signs are kernels (proofs of non-zero)
        fuse_binary_attention(logs),
        # BiBERT's Sign(x) with -1 set to 0 on the scores: x > 0, the strict form of the next pass
        lower_zero_mean_sign(logs),
        # Bi-Attention's P = bool(S / sqrt(d) + mask) as bits, P @ Sign(V) one popcount kernel
        fuse_attention_context(logs),
    ]


def fold_passes(logs: Logs, family: str) -> list[tvm.transform.Pass]:
    passes = [
        # pack(chain(kernel)) -> the kernel thresholds its integer: bits out
        fold_thresholds(logs),
        # float ops the thresholds replaced are not chain ends
        relax.transform.DeadCodeElimination(),
    ]
    if family in CPU_FAMILIES:  # a CUDA kernel looks its float ops up in a table instead
        passes += [
            # BN(concat) of kernels: the channel ops in the packs
            fold_channel_ops_into_pack(logs),
            relax.transform.DeadCodeElimination(),
            # concats of concats joined
            flatten_channel_concats(logs),
            relax.transform.DeadCodeElimination(),
            # a channel op on a concat split over its parts, so each part's kernel can take it
            split_channel_ops_over_concat(logs),
            relax.transform.DeadCodeElimination(),
            # the float ops after a kernel (and a float conv) as its epilogue
            fold_float_epilogues(logs, across_rows=family in float_conv.ACROSS_ROWS_FAMILIES),
            relax.transform.DeadCodeElimination(),
            # a residual add after a kernel (and the per-channel ops after it) in its epilogue
            fold_residual_add(logs),
            relax.transform.DeadCodeElimination(),
            # a TTQ conv's difference kernel (with its folded ops) in the conv kernel
            fuse_ttq_difference(logs),
            relax.transform.DeadCodeElimination(),
        ]
    return passes + [
        # the float ops left after a kernel as a lookup table over its integers, where small
        fold_float_tables(logs),
    ]


def cleanup_passes(logs: Logs = None) -> list[tvm.transform.Pass]:
    return [
        # the one-row views between the kernels of a lifted 1-D network merged (views of views,
        # a zero pad between two views), so that kernels read each other's outputs
        merge_unit_views(logs),
        # identical kernel calls on the same tensors once (a tensor each binary layer packed for
        # itself); after the folds: they look at readers
        relax.transform.EliminateCommonSubexpr(),
        relax.transform.DeadCodeElimination(),
    ]


def prepare_passes(family: str, lanes32: int, plans: dict | None = None) -> list[tvm.transform.Pass]:
    """The target-prepare phase (see the module doc); ``lanes32``: the 32-bit lanes of the
    target's vectors; ``plans`` receives the hand-written kernels' plans."""
    if family not in CPU_FAMILIES:
        return []
    return [
        # plain float convs with constant weights -> float_conv2d kernels (scheduled like the binary ones)
        float_conv_kernels(across_rows=family in float_conv.ACROSS_ROWS_FAMILIES),
        # max pools and constant-weight matmuls -> hand-written kernels, after the convs as before
        hand_written_float_ops(lanes32=lanes32, plans=plans),
    ]


def binarize_passes(family: str, logs: Logs = None, sign_zero: str = "exact") -> list[tvm.transform.Pass]:
    """The binarization pipeline for a target ``family`` (``targets.TargetSpec.family``);
    ``sign_zero``: the ``Sign(0)`` convention (``conventions.SIGN_ZERO``)."""
    return [
        *lift_passes(logs),
        *lower_passes(logs),
        *fuse_passes(logs),
        sign_rounds(logs, sign_zero),
        *attention_passes(logs),
        *fold_passes(logs, family),
        *cleanup_passes(logs),
    ]


def binarize(logs: Logs = None, family: str = "x86", sign_zero: str = "exact") -> tvm.transform.Pass:
    """Fuse every recognised binary layer; everything else stays on TVM's float path
    (``binarize_passes``, as one pass; ``logs`` receives each pass's ``PassLog``)."""
    return tvm.transform.Sequential(binarize_passes(family, logs, sign_zero), name="BinarizeForBitserial")
