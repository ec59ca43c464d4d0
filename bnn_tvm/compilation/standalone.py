"""Standalone libraries: a compiled model as one shared object with a plain C API, no TVM runtime.

PyPI has no TVM runtime for armv7 (the 32-bit Raspberry Pi OS), so a module exported by
``tvm.compile`` cannot run there. After TVM's Relax pipeline, though, a model with static shapes
is only a list of kernel calls on statically sized buffers: this module walks that lowered
``main`` (``plan``), builds the kernels with LLVM for the target, writes a small C driver that
calls them in order on preallocated buffers (``emit_driver``), and links kernels, driver,
constants and the runtime services the kernels call (``standalone_files/bnn_runtime.c``) with
the target's C compiler into one library whose API is ``standalone_files/bnn_model.h``.
``bnn_tvm.compilation.standalone_runtime`` loads such a library (ctypes, or under qemu for ARM).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import BnnError

FILES = os.path.join(os.path.dirname(__file__), "standalone_files")
ALIGNMENT = 64  # TVM's kernels assume 64-byte aligned buffers
API_SYMBOL = "bnn_model_run_all"  # what marks a library as standalone (standalone_runtime.is_standalone)

# VM builtins of the lowered main that only check what the static shapes already guarantee
CHECKS = {"vm.builtin.check_tensor_info", "vm.builtin.match_shape"}
IGNORED_OPS = {"relax.null_value", "relax.vm.kill_object"}
# runtime slots a kernel object may define, and the driver function that fills each
SLOTS = {
    "__TVMBackendAllocWorkspace": "bnn_alloc_workspace",
    "__TVMBackendFreeWorkspace": "bnn_free_workspace",
    "__TVMBackendParallelLaunch": "bnn_parallel_launch",
}
# runtime functions a kernel may call that bnn_runtime.c defines
PROVIDED = {"TVMFFIErrorSetRaisedFromCStrParts", "TVMFFIErrorSetRaisedFromCStr"}
DLPACK_CODES = {"int": 0, "uint": 1, "float": 2, "bfloat": 4, "bool": 6}


@dataclass(frozen=True)
class TensorRef:
    """A buffer a kernel reads or writes: ``kind`` input, storage (index, byte offset) or constant."""

    kind: str
    index: int
    offset: int
    shape: tuple
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_bits(self.dtype) // 8

    def view(self, shape: tuple) -> "TensorRef":
        return TensorRef(self.kind, self.index, self.offset, shape, self.dtype)


@dataclass
class Program:
    """The lowered ``main`` as static data: buffers, constants, kernel calls, outputs."""

    input: TensorRef
    storages: list = field(default_factory=list)  # byte sizes
    constants: list = field(default_factory=list)  # numpy arrays
    calls: list = field(default_factory=list)  # (kernel name, [TensorRef])
    outputs: list = field(default_factory=list)  # [TensorRef]

    def constant(self, value: np.ndarray) -> TensorRef:
        self.constants.append(np.ascontiguousarray(value))
        return TensorRef("constant", len(self.constants) - 1, 0, tuple(value.shape), str(value.dtype))


def dtype_bits(dtype: str) -> int:
    return 8 if dtype == "bool" else int("".join(c for c in dtype if c.isdigit()))


def dlpack_dtype(dtype: str) -> tuple[int, int]:
    kind = dtype.rstrip("0123456789")
    if kind not in DLPACK_CODES or "x" in dtype:
        raise BnnError(f"--standalone: tensors of dtype {dtype} are not supported by the C driver")
    return DLPACK_CODES[kind], dtype_bits(dtype)


def static_shape(expr, what: str) -> tuple:
    from tvm import tirx

    shape = expr if hasattr(expr, "values") else getattr(expr, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        raise BnnError(f"--standalone: {what} has no static shape; a standalone library needs static shapes")
    values = list(shape.values)
    if not all(isinstance(v, tirx.IntImm) for v in values):
        raise BnnError(f"--standalone: {what} has the shape {list(values)}, known only at run time; a standalone "
                       "library needs static shapes")
    return tuple(int(v) for v in values)


def plan(mod) -> Program:
    """The calls, buffers and constants of ``mod``'s ``main`` after ``relax.get_pipeline("default")``
    (StaticPlanBlockMemory has already shared storages between tensors whose lives do not
    overlap). Anything the driver cannot do statically is refused, named."""
    from tvm import relax, tirx
    from tvm.ir import Constant

    main = mod["main"]
    if len(main.params) != 1:
        raise BnnError(f"--standalone: the model has {len(main.params)} inputs; a standalone library takes one")
    param = main.params[0]
    values: dict = {param: TensorRef("input", 0, 0, static_shape(param.ty, "the input"),
                                     str(param.ty.dtype))}
    program = Program(values[param])

    def ref(expr, kernel: str):
        if isinstance(expr, Constant):
            return program.constant(expr.value.numpy())
        if isinstance(expr, relax.Var) and expr in values:
            return values[expr]
        raise BnnError(f"--standalone: kernel {kernel} takes an argument the C driver cannot pass ({type(expr).__name__}: "
                       f"{str(expr)[:80]})")

    for block in main.body.blocks:
        for binding in block.bindings:
            value = values_of_binding(binding, mod, values, ref, program, relax, tirx)
            if value is not None:
                values[binding.var] = value
    result = main.body.body
    returned = values.get(result) if isinstance(result, relax.Var) else None
    if isinstance(result, relax.Tuple):
        returned = tuple(ref(f, "main's return") for f in result.fields)
    if returned is None:
        raise BnnError(f"--standalone: the model returns {type(result).__name__}, which the C driver cannot copy out")
    program.outputs = list(returned) if isinstance(returned, tuple) else [returned]
    if not all(isinstance(o, TensorRef) for o in program.outputs):
        raise BnnError("--standalone: the model returns a nested tuple; the C driver copies out tensors only")
    return program


def values_of_binding(binding, mod, values, ref, program, relax, tirx):
    """What one binding of the lowered ``main`` stands for (None: nothing the driver does)."""
    from tvm.ir import Constant

    expr = binding.value
    if isinstance(expr, (relax.Var, Constant)):
        return ref(expr, binding.var.name)
    if isinstance(expr, relax.Tuple):
        return tuple(ref(f, binding.var.name) for f in expr.fields)
    if isinstance(expr, relax.TupleGetItem):
        return values[expr.tuple_value][expr.index]
    if not isinstance(expr, relax.Call):
        raise BnnError(f"--standalone: the lowered model has a {type(expr).__name__} binding the C driver does not know")
    op = expr.op
    if isinstance(op, relax.GlobalVar):
        if not isinstance(mod[op], tirx.PrimFunc):
            raise BnnError(f"--standalone: main calls the Relax function {op.name_hint}; the C driver calls kernels only")
        program.calls.append((op.name_hint, [ref(a, op.name_hint) for a in expr.args]))
        return None
    if isinstance(op, relax.ExternFunc):
        name = str(op.global_symbol)
        if name in CHECKS:
            return None
        if name == "vm.builtin.reshape":
            return values[expr.args[0]].view(static_shape(expr.args[1], f"reshape {binding.var.name}"))
        raise BnnError(f"--standalone: the model needs the VM builtin {name}, which the C driver does not implement")
    name = op.name
    if name in IGNORED_OPS:
        return None
    if name == "relax.vm.alloc_storage":
        program.storages.append(static_shape(expr.args[0], "a storage")[0])
        return ("storage", len(program.storages) - 1)
    if name == "relax.vm.alloc_tensor":
        kind, index = values[expr.args[0]]
        offset = int(expr.args[1].value)
        return TensorRef(kind, index, offset, static_shape(expr.args[2], binding.var.name),
                         str(expr.args[3].value))
    raise BnnError(f"--standalone: the model needs the operator {name}, which the C driver does not implement")


# ---- C driver ---------------------------------------------------------------------------------


def constants_layout(program: Program) -> tuple[list[int], int]:
    """Byte offset of each constant in the blob (each 64-byte aligned), and the blob's size."""
    offsets, size = [], 0
    for value in program.constants:
        offsets.append(size)
        size += -(-value.nbytes // ALIGNMENT) * ALIGNMENT
    return offsets, max(size, ALIGNMENT)


def write_constants(program: Program, path: str) -> int:
    offsets, size = constants_layout(program)
    blob = bytearray(size)
    for offset, value in zip(offsets, program.constants):
        blob[offset:offset + value.nbytes] = value.tobytes()
    with open(path, "wb") as f:
        f.write(blob)
    return size


def emit_constants_asm(blob: str, size: int) -> str:
    """The constants as read-only data, linked in from the binary blob (faster to build than a
    C array of a Bi-Real's megabytes; GNU as, every target)."""
    return "\n".join([
        '\t.section .rodata',
        f'\t.balign {ALIGNMENT}',
        '\t.globl bnn_constants',
        '\t.hidden bnn_constants',
        '\t.type bnn_constants, %object',
        'bnn_constants:',
        f'\t.incbin "{blob}"',
        f'\t.size bnn_constants, {size}',
        '\t.section .note.GNU-stack,"",%progbits',
        '',
    ])


def c_bytes(data: bytes) -> str:
    return ", ".join(str(b) for b in data)


def emit_driver(program: Program, metadata: dict, slots: list[str]) -> str:
    """The generated half of the library: buffers, tensors, the call list, and the C API."""
    const_offsets, _ = constants_layout(program)
    tensors: list[TensorRef] = []
    index_of: dict = {}

    def tensor(t: TensorRef) -> int:
        if t not in index_of:
            index_of[t] = len(tensors)
            tensors.append(t)
        return index_of[t]

    input_index = tensor(program.input)  # every tensor is registered before the tables are written
    args = [tensor(t) for _, call_args in program.calls for t in call_args]
    outputs = [tensor(t) for t in program.outputs]
    shapes, shape_at = [], []
    for t in tensors:
        shape_at.append(len(shapes))
        shapes.extend(t.shape)

    def data(t: TensorRef) -> str:
        if t.kind == "input":
            return "bnn_input"
        if t.kind == "storage":
            return f"bnn_storage{t.index} + {t.offset}"
        return f"(void *)(bnn_constants + {const_offsets[t.index]})"

    lines = [
        "/* Generated by bnn_tvm.compilation.standalone: the model's buffers and kernel calls. Do not edit. */",
        '#include "bnn_runtime.c"',
        '#include "bnn_model.h"',
        "",
        "extern const uint8_t bnn_constants[];",
        *[f"extern void *{slot};" for slot in slots],
        "typedef int (*BnnKernel)(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);",
        *[f"int __tvm_ffi_{name}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);"
          for name in dict.fromkeys(name for name, _ in program.calls)],
        "",
        f"static uint8_t bnn_input[{max(program.input.nbytes, 1)}] __attribute__((aligned({ALIGNMENT})));",
        *[f"static uint8_t bnn_storage{i}[{max(size, 1)}] __attribute__((aligned({ALIGNMENT})));"
          for i, size in enumerate(program.storages)],
        f"static int64_t bnn_shapes[] = {{{', '.join(map(str, shapes)) or '0'}}};",
        "static DLTensor bnn_tensors[] = {",
    ]
    for i, t in enumerate(tensors):
        code, bits = dlpack_dtype(t.dtype)
        lines.append(f"    {{{data(t)}, {{kDLCPU, 0}}, {len(t.shape)}, {{{code}, {bits}, 1}}, "
                     f"bnn_shapes + {shape_at[i]}, NULL, 0}},")
    lines += ["};", "static TVMFFIAny bnn_args[] = {"]
    lines += [f"    {{.type_index = kTVMFFIDLTensorPtr, .v_ptr = &bnn_tensors[{a}]}}," for a in args]
    if not args:
        lines.append("    {.type_index = kTVMFFINone},")
    lines += ["};", "static const struct { BnnKernel fn; const char *name; int first, count; } bnn_steps[] = {"]
    first = 0
    for name, call_args in program.calls:
        lines.append(f'    {{__tvm_ffi_{name}, "{name}", {first}, {len(call_args)}}},')
        first += len(call_args)
    if not program.calls:
        lines.append("    {NULL, NULL, 0, 0},")
    meta = json.dumps(metadata).encode()
    lines += [
        "};",
        f"#define BNN_NUM_STEPS {len(program.calls)}",
        f"#define BNN_NUM_OUTPUTS {len(outputs)}",
        f"static const int bnn_outputs[] = {{{', '.join(map(str, outputs))}}};",
        f"static const char *const bnn_output_dtypes[] = {{{', '.join(json.dumps(tensors[o].dtype) for o in outputs)}}};",
        f"static const size_t bnn_output_bytes[] = {{{', '.join(str(tensors[o].nbytes) for o in outputs)}}};",
        f"static const size_t bnn_input_bytes = {program.input.nbytes};",
        f"static const int bnn_input_tensor = {input_index};",
        f"static const char bnn_meta[] = {{{c_bytes(meta)}, 0}};",
        "",
        "static void bnn_install_slots(void)",
        "{",
        *[f"    {slot} = (void *){SLOTS[slot]};" for slot in slots],
        "}",
        "",
        open(os.path.join(FILES, "bnn_driver.c")).read(),
    ]
    return "\n".join(lines)


# ---- build ------------------------------------------------------------------------------------


def gcc_of(spec) -> str:
    """The target's C compiler (the driver is C: no libstdc++ on the dependency list)."""
    gcc = spec.cross_compiler.replace("g++", "gcc") if spec.cross_compiler else "gcc"
    if shutil.which(gcc) is None:
        package = spec.apt_package.replace("g++", "gcc") if spec.apt_package else "gcc"
        raise BnnError(f"target {spec.name}: --standalone needs the C compiler {gcc}: apt-get install {package}")
    return gcc


def tool_of(gcc: str, tool: str) -> str:
    return gcc[: -len("gcc")] + tool if gcc.endswith("gcc") else tool


def object_symbols(gcc: str, path: str) -> tuple[set, set]:
    """``(defined, undefined)`` symbol names of an object file, from the target's nm."""
    done = subprocess.run([tool_of(gcc, "nm"), path], capture_output=True, text=True)
    if done.returncode != 0:
        raise BnnError(f"--standalone: nm failed on the kernels' object: {done.stderr.strip()[:300]}")
    defined, undefined = set(), set()
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            (undefined if parts[-2] in ("U", "w") else defined).add(parts[-1])
    return defined, undefined


def runtime_symbols(defined: set, undefined: set) -> list[str]:
    """The slots to fill; refuses a kernel that needs a TVM runtime service the driver lacks."""
    missing = sorted(s for s in undefined if (s.startswith(("TVM", "__TVM", "__tvm"))) and s not in PROVIDED)
    unknown = sorted(s for s in defined if s.startswith(("__TVM", "__tvm_ffi__")) and s not in SLOTS)
    if missing or unknown:
        raise BnnError(f"--standalone: the kernels need the TVM runtime function(s) {', '.join(missing + unknown)}, "
                       "which the C driver does not implement")
    return sorted(s for s in defined if s in SLOTS)


@dataclass
class StandaloneModule:
    """Kernels built for ``spec`` and the program that calls them; ``export`` links the library."""

    kernels: object  # tvm.runtime.Module (LLVM)
    program: Program
    metadata: dict
    spec: object

    def export(self, path: str) -> None:
        import tvm_ffi

        gcc = gcc_of(self.spec)
        with tempfile.TemporaryDirectory(prefix="bnn-standalone-") as work:
            kernels = os.path.join(work, "kernels.o")
            self.kernels.write_to_file(kernels)
            slots = runtime_symbols(*object_symbols(gcc, kernels))
            size = write_constants(self.program, os.path.join(work, "constants.bin"))
            with open(os.path.join(work, "constants.S"), "w") as f:
                f.write(emit_constants_asm(os.path.join(work, "constants.bin"), size))
            with open(os.path.join(work, "driver.c"), "w") as f:
                f.write(emit_driver(self.program, self.metadata, slots))
            with open(os.path.join(work, "exports.map"), "w") as f:
                f.write("{ global: bnn_model_*; local: *; };\n")
            include = os.path.join(os.path.dirname(tvm_ffi.__file__), "include")
            cmd = [gcc, "-O2", "-fPIC", "-shared", "-std=gnu11", "-I", FILES, "-I", include, "-o", path,
                   os.path.join(work, "driver.c"), os.path.join(work, "constants.S"), kernels,
                   f"-Wl,--version-script={os.path.join(work, 'exports.map')}", "-Wl,--no-undefined",
                   "-Wl,-z,noexecstack", "-Wl,--strip-debug", "-static-libgcc", "-lpthread", "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise BnnError(f"--standalone: linking the library with {gcc} failed:\n{done.stderr[-2000:]}")


def build(mod, spec, metadata: dict) -> StandaloneModule:
    """Lower ``mod`` (scheduled, with Relax ``main``) as ``tvm.compile`` does, plan the driver and
    build the kernels with LLVM for ``spec``."""
    import tvm
    from tvm import relax

    if spec.family == "cuda":
        raise BnnError(f"target {spec.name}: --standalone builds CPU libraries (x86, ARM); a CUDA module needs "
                       "TVM's runtime")
    target = spec.tvm_target()
    with target:
        lowered = relax.get_pipeline("default")(mod)
    program = plan(lowered)
    kernels = tvm.IRModule({gv: f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)})
    return StandaloneModule(tvm.tirx.build(kernels, target=target), program, metadata, spec)
