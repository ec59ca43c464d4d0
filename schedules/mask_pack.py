"""``pack_ternary`` of float rows on x86 with the vector compare's mask as the word's bits.

``bitserial.pack_ternary`` on ``[N, C]`` rows (a dense's ternary input: BiBERT's token rows)
writes, per row and 32-channel word ``w``, word ``2 w`` with bit ``b`` set where
``x[n, 32 w + b] > 0`` and word ``2 w + 1`` with it set where ``x > 0 or x < 0`` (not for NaN).
``cpu.pack_rows`` computes that as vectors of shifted bits summed across lanes: about 30
instructions a word. On x86 a vector compare already is a lane mask: AVX-512's ``vcmpps`` into a
``k`` register read with ``kmovw``, AVX2's ``vmovmskps``. Here each word is the masks of its
``32 / lanes`` vectors (``tirx.reinterpret`` of the ``lanes x bool`` compare as a ``lanes``-bit
integer, LLVM's ``bitcast <16 x i1> to i16``), shifted into place and or-ed: the same bits,
two compares and a few scalar operations per vector (BiBERT's 64 x 1024 GELU rows: 4096 word
pairs).

Applies to x86 vector units of 8 or 16 lanes and ``C`` a multiple of 32 (no padding bits);
``cpu.pack_rows`` otherwise. The kernel is built, not a schedule of the compute, so it has no
tuning space (``cpu.built_kernel``; ``tune`` leaves it as it is).
"""

from __future__ import annotations

import numpy as np
from tvm import tirx

WORD_BITS = 32


def applies(unit, channels: int) -> bool:
    return unit.name.startswith(("avx512", "avx2")) and unit.lanes in (8, 16) and channels % WORD_BITS == 0


def lane_mask(condition, lanes: int):
    """The ``lanes x bool`` ``condition`` as a 32-bit word, lane ``i`` in bit ``i`` (as
    ``cpu.pack_bits32_intrin``'s mask: a ``uint1`` vector reinterpreted, LLVM's bitcast)."""
    return tirx.Cast("uint32", tirx.reinterpret(f"uint{lanes}", tirx.Cast(f"uint1x{lanes}", condition)))


def ternary_rows(rows: int, channels: int, lanes: int, parallel: bool):
    """The PrimFunc ``(x [rows, channels] float32, out [rows, 2 * channels / 32] uint32)``
    (module doc), rows in ``parallel`` or not."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    words = channels // WORD_BITS
    zero = tirx.Broadcast(tirx.const(0.0, "float32"), lanes)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_attr({"tirx.noalias": True})
            x = T.arg("x", T.buffer((rows, channels), "float32"))
            out = T.arg("out", T.buffer((rows, 2 * words), "uint32"))
            with T.sblock("root"):
                with (T.parallel if parallel else T.serial)(0, rows) as n:
                    with T.serial(0, words) as w:
                        signs, nonzeros = [], []
                        for part in range(WORD_BITS // lanes):
                            value = x[n, tirx.Ramp(w * WORD_BITS + part * lanes, 1, lanes)]
                            shift = tirx.const(part * lanes, "uint32")
                            signs.append(lane_mask(value > zero, lanes) << shift)
                            nonzeros.append(lane_mask(tirx.Or(value > zero, value < zero), lanes) << shift)
                        T.buffer_store(out, _or_all(signs), [n, 2 * w])
                        T.buffer_store(out, _or_all(nonzeros), [n, 2 * w + 1])
    return builder.get()


def _or_all(values):
    result = values[0]
    for value in values[1:]:
        result = result | value
    return result


def reference(x: np.ndarray) -> np.ndarray:
    """The words ``pack_ternary`` defines, in numpy (for tests)."""
    rows, channels = x.shape
    bits = np.stack([x > 0, (x > 0) | (x < 0)], axis=1).reshape(rows, 2, channels // WORD_BITS, WORD_BITS)
    words = (bits.astype(np.uint64) << np.arange(WORD_BITS, dtype=np.uint64)).sum(-1).astype(np.uint32)
    return words.transpose(0, 2, 1).reshape(rows, -1)
