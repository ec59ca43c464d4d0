"""Bit-exactness check of a compiled model against ONNX Runtime with its optimisations off.

ORT's default graph optimisations fold Conv+BN and move values that sit exactly on a threshold,
so the reference runs with ``ORT_DISABLE_ALL``. Every binarizer the compiler turned into packed
bits is exposed as an output on both sides and compared for equality; float outputs must agree
within float rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .compiler import add_graph_outputs, compile_onnx, lower_onnx
from ..devices.endpoint import Endpoint
from ..errors import BnnError
from ..frontend.onnx_import import graph_input, load_for_compile, signs_as_binarizers
from .runtime import CompiledRunner, check_runs_here
from .reference import NEAR_TIE, RELATIVE_TOLERANCE, near_ties, reference_outputs
from .verify_layers import PerLayerReport, verify_per_layer
from bnn_tvm import targets
from bnn_tvm.targets.qemu_user import qemu_command
from .standalone_runtime import StandaloneRunner
from ..devices.remote import remote_bench

@dataclass
class VerifyReport:
    output_names: list[str]
    max_abs_diff: float
    max_rel_diff: float
    binary_checked: int
    binary_mismatches: dict
    fused: list[str]
    accuracy: dict
    # --sign-zero plus: the reference is the float graph with Sign(0) = +1; how far the compiled
    # model is from the float graph itself (binary values differing, the outputs' max abs diff)
    float_graph_differences: tuple[int, float] | None = None
    end_to_end: "EndToEnd | None" = None  # where binarized values differ: where the differences start
    per_layer: "PerLayerReport | None" = None
    per_layer_note: str | None = None  # why the per-layer check did not run

    @property
    def exact(self) -> bool:
        """End to end: binarized values identical, outputs within float rounding."""
        return self.max_rel_diff <= RELATIVE_TOLERANCE and not self.binary_mismatches

    @property
    def ok(self) -> bool:
        """Without the per-layer check: exact end to end. With it (``RULE``): every segment exact,
        and end to end exact or each difference traced to float rounding upstream."""
        if self.per_layer is None:
            return self.exact
        traced = bool(self.binary_mismatches) and self.end_to_end is not None and self.end_to_end.traced
        return self.per_layer.exact and (self.exact or traced or self.float_drift)

    @property
    def float_drift(self) -> bool:
        """Every binarized value identical, the outputs beyond the tolerance end to end: with every
        kernel within float rounding on ONNX Runtime's inputs (the per-layer check), that is the
        rounding of the float layers after the binarizers compounding (a softmax over large logits)."""
        return not self.binary_mismatches and self.max_rel_diff > RELATIVE_TOLERANCE

    def lines(self) -> list[str]:
        out = [f"fused: {line}" for line in self.fused] or ["fused: nothing (no binary layer recognised)"]
        out.append(f"outputs {', '.join(self.output_names)}: max abs diff {self.max_abs_diff:.3g}, "
                   f"max rel diff {self.max_rel_diff:.3g} (tolerance {RELATIVE_TOLERANCE:g})")
        if self.binary_mismatches:
            for name, count in self.binary_mismatches.items():
                out.append(f"binary activation {name}: {count} values differ")
            if self.end_to_end is not None:
                out.extend(self.end_to_end.lines())
        elif self.binary_checked:
            out.append(f"binary activations: all {self.binary_checked} tensors identical")
        elif self.fused:
            out.append("binary activations: none compared (no binarizer output of the ONNX graph was found)")
        if self.float_graph_differences is not None:
            values, diff = self.float_graph_differences
            out.append(f"--sign-zero plus: checked against the float graph with Sign(0) = +1; against the float graph "
                       f"itself {values} binarized values differ (where a Sign saw 0), outputs max abs diff {diff:.3g}")
        if self.per_layer is not None:
            if self.float_drift and self.per_layer.exact:
                out.append("outputs: beyond the tolerance end to end, but every binarized value is identical and every "
                           "kernel within float rounding on ONNX Runtime's inputs: the float layers' rounding compounding")
            out.extend(self.per_layer.lines())
            out.append(RULE)
        elif self.per_layer_note:
            out.append(f"per layer: {self.per_layer_note}")
        for engine, acc in self.accuracy.items():
            out.append(f"accuracy ({engine}): {acc:.4f}")
        out.append("VERIFY OK" if self.ok else "VERIFY FAILED")
        return out


RULE = ("rule: VERIFY OK when every segment is exact on ONNX Runtime's inputs (a binarized value may differ only where "
        "ONNX Runtime's own input to it is a near-tie) and, end to end, every binarized value is identical or its "
        "difference starts at a near-tie of a float layer (float rounding upstream); float outputs may then exceed the "
        "tolerance end to end (rounding compounding through float layers) only where every segment is within it")


def verify(
    path: str,
    target: str = "x86",
    x: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    batch: int | None = None,
    extra_accuracy: dict | None = None,
    progress: bool = False,
    endpoint: Endpoint = Endpoint(),
    sign_zero: str = "exact",
    per_layer: bool = False,
    standalone: bool = False,
) -> VerifyReport:
    """Compile ``path``, run it and ORT on ``x`` (random normal inputs when None), compare;
    ``progress``: the compile's stage bar. With a remote ``endpoint`` (``--rpc``, or ``--tracker``
    and ``--key``) the compiled module runs on that board (a Raspberry Pi, the emulated one), ORT here.
    ``sign_zero="plus"``: the model is compiled with ``Sign(0) = +1`` and checked against the
    float graph with the same convention; the report also says how far it is from the float
    graph itself. ``per_layer``: also check every compiled kernel on ONNX Runtime's values of its
    inputs (``verify_layers``); it runs by itself when binarized values differ end to end.
    ``standalone``: the model is compiled as a standalone library (``bnn_tvm.compilation.standalone``) and
    run here, through ctypes or, for an ARM target, under qemu-user."""
    if standalone:
        check_standalone_runs_here(targets.get(target), endpoint.remote)
    else:
        check_runs_here(targets.get(target), remote=endpoint.remote)
    model = load_for_compile(path)
    input_name, dims = graph_input(model, path)
    lowered = lower_onnx(path, batch, target=target, sign_zero=sign_zero)  # first: it refuses a model too large to run
    if x is None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((16, *[d or 1 for d in dims[1:]])).astype(np.float32)
    outputs = [o.name for o in lowered.onnx_model.graph.output]
    # binarized tensors are exposed as extra outputs, those that are model outputs already (exposing
    # them again adds no output) compared from there: ``binaries`` ends with them
    binarized = lowered.binarizer_outputs()
    exposed = [t for t in binarized if t not in outputs]
    binaries = exposed + [t for t in binarized if t in outputs]

    def binaries_last(values: list) -> list:
        """``values`` (the model's outputs, then ``exposed``) with the binarized outputs again."""
        return list(values) + [values[outputs.index(t)] for t in binaries[len(exposed):]]

    # an output like [B*N, C] (or a binarized tensor compared like one) cannot be cut into chunks
    follows_batch = lowered.outputs_follow_batch() and lowered.tensors_follow_batch(binaries)
    if batch is None and dims and dims[0] is None and not follows_batch:
        batch = len(x)  # compile the whole batch
    compiled = compile_onnx(path, target, batch=batch, extra_outputs=exposed, progress=progress, sign_zero=sign_zero,
                            standalone=standalone)
    chunk = dims[0] if dims else None  # a fixed-batch model runs in chunks of its batch
    if chunk is not None and not follows_batch:
        ours = joined_chunks(compiled, target, x, endpoint, chunk)
    else:
        ours = compiled_outputs(compiled, target, x, endpoint)
    ours = binaries_last(ours)
    add_graph_outputs(model, exposed)
    float_graph = model
    if sign_zero == "plus":
        model = signs_as_binarizers(model)
    try:
        theirs = binaries_last(reference_outputs(model, x, input_name, chunk))
    except BnnError as err:
        raise BnnError(f"{path}: {err}") from err
    n_final = len(theirs) - len(binaries)
    abs_diff, rel_diff, mismatches = compare(ours, theirs, binaries)
    differences = None
    if sign_zero == "plus":
        plus_abs_diff, _, plus_mismatches = compare(ours, binaries_last(reference_outputs(float_graph, x, input_name, chunk)),
                                                 binaries)
        differences = (sum(plus_mismatches.values()), plus_abs_diff)
    accuracy = {}
    if labels is not None:
        accuracy["bnn_tvm"] = float(np.mean(ours[0].argmax(1) == labels))
        accuracy["onnxruntime"] = float(np.mean(theirs[0].argmax(1) == labels))
        accuracy.update(extra_accuracy or {})
    names = [o.name for o in model.graph.output][:n_final]
    report = VerifyReport(names, abs_diff, rel_diff, len(binaries), mismatches, compiled.metadata["fused"], accuracy,
                          differences)
    if mismatches:
        ours_of = dict(zip(binaries, ours[n_final:]))
        theirs_of = dict(zip(binaries, theirs[n_final:]))
        report.end_to_end = trace_end_to_end(model, binaries, mismatches, ours_of, theirs_of, x, input_name, chunk)
    if per_layer or not report.exact:
        reference = signs_as_binarizers(lowered.onnx_model) if sign_zero == "plus" else lowered.onnx_model
        try:
            report.per_layer = verify_per_layer(lowered, reference, x, target, sign_zero, progress,
                                                run=lambda c, row: compiled_outputs(c, target, row, endpoint),
                                                whole_kernels=lowered.kernel_calls(), standalone=standalone)
        except BnnError as err:
            report.per_layer_note = f"not run: {err}"
        except Exception as err:  # noqa: BLE001 (a crash here must not hide the end-to-end report)
            first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            report.per_layer_note = (f"not run: the segments model failed ({type(err).__name__}: {first}); "
                                     "please report it")
    elif report.exact:
        report.per_layer_note = "not run (end to end exact; --per-layer checks each kernel on ONNX Runtime's inputs)"
    return report


def check_standalone_runs_here(spec, remote: bool) -> None:
    """A standalone library runs on this machine (x86) or under qemu-user (ARM); a board runs
    TVM modules (``--rpc``/``--tracker``)."""
    if remote:
        raise BnnError("--standalone libraries run here (natively or under qemu-user); --rpc/--tracker run TVM modules "
                       "on a board: leave one of them out")
    if spec.family == "cuda":
        raise BnnError(f"target {spec.name}: --standalone builds CPU libraries (x86, ARM); a CUDA module needs "
                       "TVM's runtime")
    if not spec.is_host and spec.isa == "x86_64":
        return  # another x86 CPU's code: runs here if this CPU has its features
    if not spec.is_host and spec.qemu:
        qemu_command(spec, f"the standalone library of target {spec.name}")  # before compiling: installed?


def compare(ours: list, theirs: list, binaries: list[str]) -> tuple[float, float, dict]:
    """``(max abs diff, max rel diff, {binarized tensor: differing values})``: the model's outputs
    come first, the ``binaries`` last, on both sides."""
    n_final = len(theirs) - len(binaries)
    abs_diff, rel_diff = 0.0, 0.0
    for a, b in zip(ours[:n_final], theirs[:n_final]):
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        abs_diff = max(abs_diff, diff)
        rel_diff = max(rel_diff, diff / max(float(np.max(np.abs(b))), np.finfo(np.float32).tiny))
    mismatches = {
        name: int(np.sum(a != b)) for name, a, b in zip(binaries, ours[n_final:], theirs[n_final:]) if np.any(a != b)
    }
    return abs_diff, rel_diff, mismatches


@dataclass
class Divergence:
    """The first binarized tensor (in graph order) where the compiled model differs, and how many
    of its differing values the float graph itself puts within rounding of the threshold."""

    tensor: str
    differing: int
    near_ties: int | None  # None: the binarizer's input could not be found

    def line(self) -> str:
        head = f"first difference: binary activation {self.tensor}, {self.differing} values"
        if self.near_ties is None:
            return head + " (its binarizer's input was not found: no tie analysis)"
        if self.near_ties == self.differing:
            return (head + f", all within {NEAR_TIE:g} (relative to the input's range) of the binarizer's threshold "
                    "in the float graph: float rounding upstream (a float conv or Gemm summing in its own order) "
                    "decides them, and the later differences follow from them")
        return (head + f", {self.differing - self.near_ties} of them not near the threshold: the compiled model "
                "computes this binarizer's input differently (a compiler error; please report it)")


def first_divergence(model, mismatches: dict, ours: dict, theirs: dict, x, input_name: str, batch) -> Divergence:
    order = {out: index for index, node in enumerate(model.graph.node) for out in node.output}
    tensor = min(mismatches, key=lambda name: order.get(name, len(order)))
    near = near_ties(model, [tensor], x, input_name, batch)[tensor]
    differing = ours[tensor] != theirs[tensor]
    found = None if near is None or near.shape != differing.shape else int((differing & near).sum())
    return Divergence(tensor, int(differing.sum()), found)


@dataclass
class EndToEnd:
    """Binarized values that differ end to end, how many of them are near-ties of a float layer,
    and the tensors where the differences start (no binarized tensor before them differs):
    ``{tensor: (differing values, near-ties or None without a tie analysis)}``."""

    differing: int
    near_ties: int
    tensors: int
    origins: dict

    @property
    def traced(self) -> bool:
        """Every difference starts at a near-tie: float rounding upstream decided it; the rest
        follow from those flips."""
        return bool(self.origins) and all(near == count for count, near in self.origins.values())

    def lines(self) -> list[str]:
        out = [f"end to end: {self.differing} binarized values differ (in {self.tensors} tensors), {self.near_ties} of "
               f"them near-ties of a float layer (its input within {NEAR_TIE:g} of its range from the binarizer's "
               "threshold in ONNX Runtime: float rounding upstream)"]
        for tensor, (count, near) in self.origins.items():
            if near is None:
                how = "its binarizer's input was not found: no tie analysis"
            elif near == count:
                how = "all near-ties"
            else:
                how = f"{count - near} of them not near the threshold: not float rounding"
            out.append(f"end to end: differences start in {tensor}: {count} values, {how}")
        if self.traced:
            out.append("end to end: every difference traced to float rounding upstream (the later ones follow "
                       "from those flips)")
        return out


def trace_end_to_end(model, binaries: list, mismatches: dict, ours: dict, theirs: dict, x, input_name: str,
                     batch) -> EndToEnd:
    masks = near_ties(model, list(mismatches), x, input_name, batch)
    near_counts = {}
    for tensor in mismatches:
        differing, mask = ours[tensor] != theirs[tensor], masks[tensor]
        near_counts[tensor] = None if mask is None or mask.shape != differing.shape else int((differing & mask).sum())
    origins = {t: (mismatches[t], near_counts[t]) for t in mismatches
               if not binarized_ancestors(model, t, set(binaries)) & set(mismatches)}
    return EndToEnd(sum(mismatches.values()), sum(n or 0 for n in near_counts.values()), len(mismatches), origins)


def binarized_ancestors(model, tensor: str, binarized: set) -> set:
    """The nearest tensors of ``binarized`` that ``tensor`` is computed from: a difference
    reaches ``tensor`` only through a float path or through one of them."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found, seen, stack = set(), set(), list(producer[tensor].input) if tensor in producer else []
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in binarized:
            found.add(name)
        elif name in producer:
            stack.extend(producer[name].input)
    return found


def joined_chunks(compiled, target: str, x: np.ndarray, endpoint: Endpoint, chunk: int) -> list[np.ndarray]:
    """A fixed-batch module's outputs on ``x``, ``chunk`` inputs at a time, each output joined
    along its first axis as ``reference_outputs`` joins ONNX Runtime's: for outputs such as
    ``[B*N, C]`` rows, which the runner cannot cut into chunks itself."""
    parts = [compiled_outputs(compiled, target, x[start : start + chunk], endpoint) for start in range(0, len(x), chunk)]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


def compiled_outputs(compiled, target: str, x: np.ndarray, endpoint: Endpoint = Endpoint()) -> list[np.ndarray]:
    """The compiled module's outputs on ``x``: here, or on the board (exported to a temporary
    library and sent over RPC, as ``bench`` does). A standalone library is exported and run here
    (ctypes, or under qemu for ARM)."""
    if compiled.standalone:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bnn-verify-") as folder:
            library = os.path.join(folder, "model.so")
            compiled.export(library)
            return StandaloneRunner.load(library).run(x)
    if not endpoint.remote:
        return CompiledRunner(compiled.executable).run(x)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bnn-verify-") as folder:
        library = os.path.join(folder, "model.so")
        compiled.export(library)
        return remote_bench(library, target, x, endpoint, repeat=1)["outputs"]
