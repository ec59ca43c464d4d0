"""Standalone libraries (``compile --standalone``): one .so with a plain C API and no TVM runtime,
bit-identical to the TVM module on x86 (ctypes) and on armv7/aarch64 under qemu-user (a C
program linked against the library, and ``bnn_runner`` behind ``run``/``verify``)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from bnn_tvm import targets
from bnn_tvm.cli import main
from bnn_tvm.training.data import digits_split
from bnn_tvm.errors import BnnError
from bnn_tvm.compilation.runtime import CompiledRunner
from bnn_tvm.compilation.standalone import FILES, plan
from bnn_tvm.compilation.standalone_runtime import StandaloneRunner, is_standalone

ALLOWED_NEEDED = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libstdc++.so.6"}
ARMV7 = targets.get("rasp3b-armv7")
RASP3B = targets.get("rasp3b")


def needs(*tools: str):
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} missing: run tools/install_system_deps.sh")


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.fixture(scope="module")
def digits():
    _, _, x, labels = digits_split()
    return x[:64], labels[:64]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """``build(target, standalone)``: the default model compiled once per pair, through the CLI."""
    folder = tmp_path_factory.mktemp("standalone")
    done = {}

    def compiled(target: str, standalone: bool) -> str:
        if (target, standalone) not in done:
            out = str(folder / f"digits_{target}{'_standalone' if standalone else ''}.so")
            assert main(["compile", "--target", target, "-o", out, *(["--standalone"] if standalone else [])]) == 0
            done[target, standalone] = out
        return done[target, standalone]

    return compiled


@pytest.fixture(scope="module")
def reference(build, digits):
    """The x86 TVM module's outputs on the digits test images."""
    return CompiledRunner.load(build("x86", False)).run(digits[0])[0]


def needed_libraries(path: str) -> set[str]:
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return {line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line}


def test_x86_library_via_ctypes_is_bit_identical_to_the_tvm_module(build, digits, reference, tmp_path):
    path = build("x86", True)
    assert is_standalone(path) and not is_standalone(build("x86", False))
    runner = CompiledRunner.load(path)
    assert isinstance(runner, StandaloneRunner) and runner.emulated is None
    assert runner.input_shape == (1, 1, 8, 8) and runner.metadata["outputs"] == ["logits"]
    for threads in (1, 2):
        runner.set_num_threads(threads)
        assert np.array_equal(bits(runner.run(digits[0])[0]), bits(reference)), f"{threads} threads"
    assert needed_libraries(path) <= ALLOWED_NEEDED
    # `run` on the library, as on a TVM module
    np.save(tmp_path / "x.npy", digits[0][:5])
    assert main(["run", path, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    assert np.array_equal(bits(np.load(tmp_path / "y.npy")), bits(reference[:5]))


TEST_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "bnn_model.h"
/* reads N inputs from argv[1], prints each output value's bits in hex */
int main(int argc, char **argv) {
    size_t in_count = 1, out_count = 1;
    for (int d = 0; d < bnn_model_input_ndim(); d++) in_count *= bnn_model_input_shape()[d];
    for (int d = 0; d < bnn_model_output_ndim(0); d++) out_count *= bnn_model_output_shape(0)[d];
    float *x = malloc(in_count * sizeof *x), *y = malloc(out_count * sizeof *y);
    FILE *f = fopen(argv[1], "rb");
    for (int n = 0; n < atoi(argv[2]); n++) {
        if (fread(x, sizeof *x, in_count, f) != in_count) return 3;
        if (bnn_model_run(x, y) != 0) { fprintf(stderr, "%s\n", bnn_model_last_error()); return 1; }
        for (size_t i = 0; i < out_count; i++) printf("%08x\n", *(unsigned *)&y[i]);
    }
    if (bnn_model_run(NULL, y) != BNN_ERROR_ARGUMENT || bnn_model_last_error()[0] == 0) return 4;
    return 0;
}
"""


def run_test_program(spec, library: str, x: np.ndarray, work) -> np.ndarray:
    """Compile TEST_PROGRAM for ``spec``, linked against ``library``, and run it under qemu."""
    gcc = spec.cross_compiler.replace("g++", "gcc")
    (work / "test.c").write_text(TEST_PROGRAM)
    shutil.copy(library, work / "libmodel.so")
    subprocess.run([gcc, "-O1", "-I", FILES, "-o", str(work / "test"), str(work / "test.c"), "-L", str(work),
                    "-lmodel", f"-Wl,-rpath,{work}"], check=True)
    np.ascontiguousarray(x, np.float32).tofile(work / "x.bin")
    done = subprocess.run([spec.qemu, "-cpu", spec.qemu_cpu, "-L", spec.sysroot, str(work / "test"),
                           str(work / "x.bin"), str(len(x))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return np.array([int(v, 16) for v in done.stdout.split()], np.uint32)


@needs("arm-linux-gnueabihf-gcc", "qemu-arm", "readelf")
def test_armv7_library_under_qemu_arm_from_c_and_through_run(build, digits, reference, tmp_path):
    path = build("rasp3b-armv7", True)
    needed = needed_libraries(path)
    assert needed <= ALLOWED_NEEDED, needed
    undefined = subprocess.run(["arm-linux-gnueabihf-nm", "-D", "-u", path], capture_output=True, text=True).stdout
    assert "TVM" not in undefined and "tvm" not in undefined
    x = digits[0][:16]
    assert np.array_equal(run_test_program(ARMV7, path, x, tmp_path), reference[:16].reshape(-1).view(np.uint32))
    runner = CompiledRunner.load(path)  # bnn_runner under qemu-arm
    assert runner.emulated.qemu == "qemu-arm" and runner.metadata["target"] == "rasp3b-armv7"
    assert np.array_equal(bits(runner.run(digits[0])[0]), bits(reference))


@needs("aarch64-linux-gnu-gcc", "qemu-aarch64")
def test_aarch64_library_under_qemu(build, digits, reference, tmp_path):
    path = build("rasp3b", True)
    assert needed_libraries(path) <= ALLOWED_NEEDED
    assert np.array_equal(run_test_program(RASP3B, path, digits[0][:4], tmp_path),
                          reference[:4].reshape(-1).view(np.uint32))
    assert np.array_equal(bits(CompiledRunner.load(path).run(digits[0])[0]), bits(reference))


@needs("arm-linux-gnueabihf-gcc", "qemu-arm")
def test_verify_standalone_armv7_under_qemu(capsys):
    assert main(["verify", "bmlp", "--target", "rasp3b-armv7", "--standalone"]) == 0
    assert "VERIFY OK" in capsys.readouterr().out


def test_unknown_vm_builtin_and_runtime_function_are_named():
    from tvm import relax

    from bnn_tvm.compilation.standalone import runtime_symbols

    x = relax.Var("x", relax.TensorType([1, 4], "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        y = builder.emit(relax.Call(relax.ExternFunc("my.custom_builtin"), [x], ty_args=[x.ty]))
        builder.emit_func_output(y)
    with pytest.raises(BnnError, match="VM builtin my.custom_builtin"):
        plan(builder.get())
    with pytest.raises(BnnError, match="TVMBackendGetFuncFromEnv"):
        runtime_symbols({"__tvm_ffi_kernel"}, {"TVMBackendGetFuncFromEnv", "memcpy"})
    assert runtime_symbols({"__TVMBackendParallelLaunch", "__tvm_ffi_k"}, {"memcpy"}) == ["__TVMBackendParallelLaunch"]


def test_refusals_are_one_line_exit_2(tmp_path, capsys):
    assert main(["compile", "--target", "cuda", "--standalone", "-o", str(tmp_path / "c.so")]) == 2
    assert "--standalone builds CPU libraries" in capsys.readouterr().err
    assert main(["verify", "--target", "rasp3b", "--standalone", "--rpc", "127.0.0.1:9"]) == 2
    assert "leave one of them out" in capsys.readouterr().err
    (tmp_path / "junk.so").write_bytes(b"not an ELF file")
    assert not is_standalone(str(tmp_path / "junk.so"))


@pytest.mark.slow
@needs("arm-linux-gnueabihf-gcc", "qemu-arm")
def test_birealnet18_x86_and_armv7_bit_identical(tmp_path):
    """Bi-Real ResNet-18 at 224x224 (random weights), 2 images: about 40 s with the three compiles."""
    from bnn_tvm.compilation.compiler import compile_onnx
    from bnn_tvm.frontend.export import resolve_model

    path = resolve_model("birealnet18")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    compile_onnx(path, "x86").export(str(tmp_path / "tvm.so"))
    expected = CompiledRunner.load(str(tmp_path / "tvm.so")).run(x)[0]
    for target in ("x86", "rasp3b-armv7"):
        library = str(tmp_path / f"{target}.so")
        compile_onnx(path, target, standalone=True).export(library)
        assert needed_libraries(library) <= ALLOWED_NEEDED
        assert np.array_equal(bits(CompiledRunner.load(library).run(x)[0]), bits(expected)), target


ARMHF_PYTHON = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libffi8", "zlib1g", "libexpat1"]
CTYPES_SCRIPT = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.bnn_model_input_shape.restype = lib.bnn_model_output_shape.restype = ctypes.POINTER(ctypes.c_int64)
size = lambda shape, ndim: eval("*".join(str(shape[d]) for d in range(ndim)) or "1")
n_in = size(lib.bnn_model_input_shape(), lib.bnn_model_input_ndim())
n_out = size(lib.bnn_model_output_shape(0), lib.bnn_model_output_ndim(0))
data, out = open(sys.argv[2], "rb").read(), bytearray()
x, y = (ctypes.c_float * n_in)(), (ctypes.c_float * n_out)()
for i in range(len(data) // (4 * n_in)):
    ctypes.memmove(x, data[4 * n_in * i:4 * n_in * (i + 1)], 4 * n_in)
    assert lib.bnn_model_run(x, y) == 0
    out += bytes(y)
open(sys.argv[3], "wb").write(out)
"""


def armhf_python(root) -> str | None:
    """Debian's armhf Python 3.11 unpacked under ``root`` (apt-get download, dpkg -x; nothing is
    installed), or None where the armhf package lists are absent (dpkg --add-architecture armhf)."""
    python = root / "usr" / "bin" / "python3.11"
    if python.exists():
        return str(python)
    arches = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout.split()
    if "armhf" not in arches or shutil.which("apt-get") is None:
        return None
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["apt-get", "download", "-q", *[f"{p}:armhf" for p in ARMHF_PYTHON]], cwd=debs,
                      capture_output=True, timeout=300).returncode != 0:
        return None
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return str(python)


@needs("arm-linux-gnueabihf-gcc", "qemu-arm", "dpkg")
def test_armv7_library_from_python_ctypes_under_qemu_arm(build, digits, reference, tmp_path):
    """Python's ctypes on armv7 (Debian's armhf Python under qemu-arm), no numpy, no TVM."""
    from bnn_tvm.cache import cache_dir

    root = pathlib.Path(cache_dir()) / "armhf-python"
    python = armhf_python(root)
    if python is None:
        pytest.skip("no armhf Python: dpkg --add-architecture armhf && apt-get update (its packages are downloaded, "
                    "not installed)")
    (tmp_path / "run.py").write_text(CTYPES_SCRIPT)
    np.ascontiguousarray(digits[0], np.float32).tofile(tmp_path / "x.bin")
    libs = f"{root}/usr/lib/arm-linux-gnueabihf:{root}/lib/arm-linux-gnueabihf"
    done = subprocess.run([ARMV7.qemu, "-cpu", ARMV7.qemu_cpu, "-L", ARMV7.sysroot, "-E", f"LD_LIBRARY_PATH={libs}",
                           "-E", f"PYTHONHOME={root}/usr", python, str(tmp_path / "run.py"),
                           build("rasp3b-armv7", True), str(tmp_path / "x.bin"), str(tmp_path / "y.bin")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.fromfile(tmp_path / "y.bin", np.float32).reshape(reference.shape)
    assert np.array_equal(bits(got), bits(reference))
