"""ONNX file -> Relax -> binarization passes -> TVM build -> one deployable shared library."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from dataclasses import dataclass, field

import onnx

from bnn_tvm import relay_passes
from bnn_tvm import schedules
from bnn_tvm import targets

from ..errors import BnnError
from ..atomic_files import atomic_write
from ..frontend.onnx_import import check_supported, graph_input, import_to_relax, load_for_compile, pin_input_shape
from . import workspaces
from .standalone import StandaloneModule, build
from bnn_tvm.schedules import tuning
from ..measure import tuning_db

METADATA_FUNC = "bnn_metadata"


@dataclass
class CompiledModel:
    executable: object  # tvm.relax.VMExecutable
    metadata: dict
    logs: list = field(default_factory=list)

    @property
    def standalone(self) -> bool:
        """Whether ``executable`` is a standalone library (``--standalone``) rather than a TVM module."""
        return isinstance(self.executable, StandaloneModule)

    def export(self, path: str) -> None:
        if self.standalone:
            atomic_write(path, self.executable.export)
            return
        spec = targets.get(self.metadata["target"])
        kwargs = {}
        if spec.cross_compiler:
            if shutil.which(spec.cross_compiler) is None:
                raise BnnError(
                    f"target {spec.name} needs the cross compiler {spec.cross_compiler}: "
                    f"apt-get install {spec.apt_package}"
                )
            from tvm.support import cc

            kwargs["fcompile"] = cc.cross_compiler(spec.cross_compiler)
        atomic_write(path, lambda tmp: self.executable.export_library(tmp, **kwargs))


def input_shape(model: onnx.ModelProto, path: str, batch: int | None) -> tuple[str, list[int]]:
    if batch is not None and batch < 1:
        raise BnnError(f"--batch {batch}: must be at least 1")
    name, dims = graph_input(model, path)
    check_float_input(model, name, path)
    if dims and dims[0] is not None and batch is not None and dims[0] != batch:
        raise BnnError(f"{path}: input {name!r} has a fixed batch of {dims[0]}, --batch {batch} was asked")
    first = dims[0] if dims and dims[0] is not None else (batch or 1)
    for axis, dim in enumerate(dims[1:], start=1):
        if dim is None:
            raise BnnError(f"{path}: input {name!r} has a symbolic dimension at axis {axis}; only the batch may be")
    return name, [first, *dims[1:]]


def check_float_input(model: onnx.ModelProto, name: str, path: str) -> None:
    """A compiled module is fed float32 (``run`` converts any float batch): a model whose input
    is of another type would compile and then never run."""
    elem_type = next(i for i in model.graph.input if i.name == name).type.tensor_type.elem_type
    if elem_type != onnx.TensorProto.FLOAT:
        type_name = onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "of no declared type"
        raise BnnError(f"{path}: input {name!r} is {type_name}; bnn_tvm compiles models with a float32 input")


def add_graph_outputs(model: onnx.ModelProto, names: list[str]) -> None:
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))


@dataclass
class LoweredModel:
    """The model after import and binarization passes, before the build."""

    mod: object  # tvm.IRModule
    onnx_model: onnx.ModelProto  # batch pinned, shape arithmetic folded
    input_name: str
    input_shape: list[int]
    logs: list
    provenance: dict  # Relax variable name -> ONNX node name

    @functools.cached_property
    def aliases(self) -> dict:
        """Relax variable name -> the names it stands for: a bit tensor the passes made, its
        binarizer's; a binding a pass emitted for a node's op (``PassLog.aliases``), that node's."""
        aliases = {
            r.nodes[-1]: r.nodes[:-1] for log in self.logs for r in log.rewrites
            if r.kernel in PACKED_TENSOR
        }
        for log in self.logs:
            aliases.update(log.aliases)
        return aliases

    def onnx_nodes(self, names) -> list[str]:
        """The ONNX nodes behind Relax variable names, through ``aliases``."""
        aliases = self.aliases

        def resolve(name: str, seen: frozenset = frozenset()) -> list[str]:
            if name in self.provenance or name not in aliases or name in seen:
                return [name]
            return [v for original in aliases[name] for v in resolve(original, seen | {name})]

        variables = [v for name in names for v in resolve(name)]
        return list(dict.fromkeys(self.provenance[v] for v in variables if v in self.provenance))

    def outputs_follow_batch(self) -> bool:
        """Whether every output's first axis is the batch (a ``[B*N, C]`` output's is not), so
        that a batch can be run in chunks of the compiled one."""
        from tvm import relax

        returned = self.mod["main"].body.body.ty
        fields = returned.fields if isinstance(returned, relax.TupleType) else [returned]
        shapes = [[int(d) for d in f.shape.values] for f in fields]
        return all(shape and shape[0] == self.input_shape[0] for shape in shapes)

    def tensors_follow_batch(self, names: list[str]) -> bool:
        """Whether each ONNX tensor of ``names`` (the binarizer outputs ``verify`` adds as outputs)
        has the batch as its first axis, by ONNX shape inference on the pinned graph; a point
        MLP's ``Sign`` on ``[B*N, C]`` rows has not. A shape not inferred counts as not following."""
        inferred = onnx.shape_inference.infer_shapes(self.onnx_model, strict_mode=False)
        first = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = info.type.tensor_type.shape.dim
            first[info.name] = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
        return all(first.get(name) == self.input_shape[0] for name in names)

    def fused_lines(self) -> list[str]:
        return [
            f"{r.detail} -> {r.kernel} [{', '.join(self.onnx_nodes(r.nodes))}]" for log in self.logs for r in log.rewrites
        ]

    def kernel_kind(self, value) -> str | None:
        """The kind (``bnn.op``) of the project's kernel a binding of ``main`` calls, else None."""
        import tvm

        if not (isinstance(value, tvm.relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")):
            return None
        attrs = self.mod[value.args[0]].attrs
        return str(attrs["bnn.op"]) if attrs is not None and "bnn.op" in attrs else None

    def kernel_calls(self) -> dict:
        """``{kernel: calls}`` of ``main``, the project's kernels by kind (``bnn.op``): those that run,
        where ``fused_lines`` also lists rewrites a later one absorbed (a conv's epilogue folded on
        into its thresholds)."""
        calls: dict = {}
        for block in self.mod["main"].body.blocks:
            for binding in block.bindings:
                kind = self.kernel_kind(binding.value)
                if kind is not None:
                    calls[kind] = calls.get(kind, 0) + 1
        return calls

    def binarizer_outputs(self) -> list[str]:
        """ONNX tensors the passes turned into packed bits (binary and k-bit activations, and the
        ternary ``Sign`` a conv or dense reads as sign and nonzero planes, or as two bipolar halves)."""
        return list(self.packed_kinds())

    def packed_kinds(self) -> dict:
        """``{ONNX tensor: pack kernel}`` of ``binarizer_outputs``, in the order the passes packed
        them (the kernel says what values the tensor holds: ``PACKED_TENSOR``)."""
        nodes = {n.name: n for n in self.onnx_model.graph.node}
        found: dict = {}
        for log in self.logs:
            for rewrite in log.rewrites:
                if rewrite.kernel not in PACKED_TENSOR:
                    continue
                position = PACKED_TENSOR[rewrite.kernel]
                found_nodes = self.onnx_nodes(rewrite.nodes[position:position + 1])
                node = nodes.get(found_nodes[0]) if found_nodes else None
                if node is not None:
                    found.setdefault(node.output[0], rewrite.kernel)
        return found


# pack kernel -> position, among the names its rewrite logs, of the tensor it packs (a pair's or
# ternary planes' first name is the conv or dense that reads them); the tensor holds +-1
# (pack_sign), -1/0/+1 (pack_sign_pair, pack_ternary, pack_heads, pack_values: an ONNX Sign), k/L,
# k = 0..L (pack_levels) or 0/1 (Bi-Attention's decisions P, as bits along the keys)
PACKED_TENSOR = {"pack_sign": 0, "pack_levels": 0, "pack_sign_pair": 1, "pack_ternary": 1, "pack_heads": 1,
                 "pack_values": 1, "binary_attention_bits": 1, "ternary_attention_bits": 1}


def read_pinned(path: str, batch: int | None = None) -> tuple[onnx.ModelProto, str, list[int]]:
    """``(model, input name, input shape)``: the ONNX model at ``path`` as every engine reads it
    (QONNX expanded, its ops checked against TVM's importer, the input shape pinned to
    ``batch`` and the shape arithmetic folded)."""
    model = load_for_compile(path)
    check_supported(model, path)
    name, shape = input_shape(model, path, batch)
    check_memory(model, name, shape, path)
    pinned = pin_input_shape(model, name, shape)
    check_memory(pinned, name, shape, path)
    return pinned, name, shape


def check_memory(model: onnx.ModelProto, input_name: str, shape: list[int], path: str) -> None:
    """Refuse, before anything is allocated, a model that cannot fit in this machine's memory: a
    huge declared input or ``ConstantOfShape`` would end in numpy's MemoryError or a C++
    ``std::bad_alloc`` deep in the import. Refused: a single tensor larger than the memory, or
    constants to be made that together are (the VM reuses activations' memory, so their sum,
    printed as the estimate, is only an upper bound of what a run needs)."""
    sizes = dict(tensor_sizes(model))
    sizes[f"input {input_name!r}"] = (shape, 4 * _product(shape))
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    largest, (dims, size) = max(sizes.items(), key=lambda item: item[1][1])
    constants = sum(size for what, (_, size) in sizes.items() if what.endswith("(ConstantOfShape)"))
    if size <= available and constants <= available:
        return
    total = sum(size for _, size in sizes.values())
    what = (f"{largest} of shape {dims} needs {size / 2**30:.1f} GiB" if size > available
            else f"its ConstantOfShape constants need {constants / 2**30:.1f} GiB")
    raise BnnError(f"{path}: {what}, more than this machine's {available / 2**30:.1f} GiB of memory "
                   f"(all its tensors: about {total / 2**30:.1f} GiB)")


def tensor_sizes(model: onnx.ModelProto):
    """``(description, (dims, bytes))`` of each tensor of ``model`` with a known static shape."""
    from onnx import numpy_helper

    for info in list(model.graph.value_info) + list(model.graph.output):
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if tensor.HasField("shape") and None not in dims and tensor.elem_type:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
            yield f"tensor {info.name!r}", (dims, itemsize * _product(dims))
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in constants:
            dims = [int(d) for d in numpy_helper.to_array(constants[node.input[0]]).reshape(-1)]
            yield f"constant of node {node.name or node.output[0]!r} (ConstantOfShape)", (dims, 4 * _product(dims))


def _product(dims) -> int:
    import math

    return math.prod(max(int(d), 0) for d in dims)


def check_static_shapes(mod, provenance: dict, path: str) -> None:
    """Every tensor of the imported model has a static shape: the binarization passes and the
    schedules need them. An op TVM imports with an unknown output shape (``Unique``, ``NonZero``)
    is refused, named."""
    from tvm import relax, tirx

    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            ty = binding.var.ty
            types = ty.fields if isinstance(ty, relax.TupleType) else [ty]
            for field in types:
                if not isinstance(field, relax.TensorType):
                    continue
                shape = getattr(field, "shape", None)
                dims = list(shape.values) if shape is not None and hasattr(shape, "values") else None
                if dims is None or not all(isinstance(d, tirx.IntImm) for d in dims):
                    node = provenance.get(binding.var.name, binding.var.name)
                    shown = "unknown" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"
                    raise BnnError(f"{path}: node {node!r} has an output of shape {shown} that is only known when "
                                   "the model runs; bnn_tvm compiles models whose shapes are all static")


def lower_onnx(
    path: str, batch: int | None = None, extra_outputs: list[str] | None = None, target: str = "x86",
    sign_zero: str = "exact", binarize: bool = True,
) -> LoweredModel:
    """Import ``path`` into Relax and run the binarization passes (for ``target``: CPU kernels
    compute their float epilogues, CUDA kernels look them up in tables; ``sign_zero``: the
    ``Sign(0)`` convention, ``relay_passes.conventions.SIGN_ZERO``). ``binarize=False``: the
    imported float graph as it is (no passes, so no static-shape requirement either)."""
    model, name, shape = read_pinned(path, batch)
    add_graph_outputs(model, extra_outputs or [])
    mod, provenance = import_to_relax(model, {name: shape}, path)
    logs: list = []
    if binarize:
        check_static_shapes(mod, provenance, path)  # the passes and the schedules need them
        mod = relay_passes.binarize(logs, targets.get(target).family, sign_zero)(mod)
    return LoweredModel(mod, model, name, shape, logs, provenance)


def check_build_options(spec, db: str | None, sign_zero: str, standalone: bool, binarize: bool) -> None:
    """Refuse the ``compile_onnx`` options that cannot go together: a CUDA module needs TVM's
    runtime, and tuning records, a ``Sign(0)`` convention and the standalone library all apply
    to the binary kernels, which ``binarize=False`` does not make."""
    if standalone and spec.family == "cuda":
        raise BnnError(f"target {spec.name}: --standalone builds CPU libraries (x86, ARM); a CUDA module needs "
                       "TVM's runtime")
    if not binarize and (db or standalone or sign_zero != "exact"):
        raise BnnError("the float build (binarize=False) takes no tuning records, --standalone or --sign-zero: "
                       "they apply to the binary kernels")


@contextlib.contextmanager
def cleared_on_error(bar):
    """On an error the progress bar is cleared, so the error's message stays the one line shown."""
    try:
        yield
    except BaseException:
        bar.leave = False
        raise


def compile_onnx(
    path: str, target: str = "x86", batch: int | None = None, extra_outputs: list[str] | None = None,
    db: str | None = None, progress: bool = False, sign_zero: str = "exact", standalone: bool = False,
    binarize: bool = True,
) -> CompiledModel:
    """Compile the ONNX model at ``path``; ``extra_outputs`` exposes inner tensors (for verify);
    ``db``: a tuning database folder (``python -m bnn_tvm tune``) whose records replace the
    hand-written schedules where they were faster; ``progress``: a bar over the compile stages
    (a large model takes tens of seconds, most of it in the import and in LLVM); ``standalone``:
    kernels and a C driver with no TVM runtime (``bnn_tvm.compilation.standalone``) instead of a VM module;
    ``binarize=False``: the float graph in TVM's default lowering, with none of the passes,
    schedules or records (``bench``'s ``tvm_fp32`` baseline)."""
    import tvm
    from tqdm import tqdm
    from tvm import relax

    spec = targets.get(target)
    check_build_options(spec, db, sign_zero, standalone, binarize)
    stages = (["importing ONNX, binarization passes" if binarize else "importing ONNX"]
              + (["tuning records"] if db else []) + (["scheduling"] if binarize else []) + ["LLVM build"])
    with tqdm(total=len(stages), desc=f"compile {os.path.basename(path)}", unit="stage", disable=not progress) as bar, \
            cleared_on_error(bar):

        def stage(done: bool = True) -> None:
            bar.update(int(done))
            if bar.n < len(stages):
                bar.set_postfix_str(stages[bar.n])

        stage(done=False)
        lowered = lower_onnx(path, batch, extra_outputs, target, sign_zero, binarize)
        metadata = {
            "model": os.path.basename(path),
            "target": spec.name,
            "input_name": lowered.input_name,
            "input_shape": lowered.input_shape,
            "outputs": [o.name for o in lowered.onnx_model.graph.output],
            "fused": lowered.fused_lines(),
            "kernels": lowered.kernel_calls(),
        }
        if binarize:
            metadata["sign_zero"] = sign_zero  # the convention the passes compiled (none without them)
        if standalone:
            metadata["standalone"] = True
        builder = relax.BlockBuilder(lowered.mod)
        with builder.function(METADATA_FUNC, []):
            builder.emit_func_output(tvm.ir.StringImm(json.dumps(metadata)))
        mod = builder.get()
        stage()
        if db:
            with tuning_db.readable_copy(db) as checked:
                mod = tuning.apply_database(mod, checked, spec)
            stage()
        if binarize:
            mod = schedules.schedule_module(mod, spec)
            stage()
        if standalone:
            executable = build(mod, spec, metadata)
        else:
            target = spec.tvm_target()
            pipeline = workspaces.build_pipeline(target) if workspaces.enabled() else "default"
            executable = tvm.compile(mod, target, relax_pipeline=pipeline)
        stage()
    return CompiledModel(executable, metadata, lowered.logs)
