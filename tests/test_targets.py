"""Named targets, user-defined JSON targets, cross-compiled libraries and armv7 kernels under qemu-arm."""

from __future__ import annotations

import re

import json
import shutil
import subprocess
import sys

import pytest

from bnn_tvm import targets
from bnn_tvm.errors import BnnError
from bnn_tvm.frontend.export import default_model_path
from bnn_tvm.targets.elf import read_header

REQUIRED = ["x86", "x86-avx2", "rasp3b", "rasp3b-armv7", "rasp4b", "aarch64", "cuda"]


def needs(tool: str, package: str):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} missing: run tools/install_system_deps.sh ({package})")


def test_required_targets_resolve_to_tvm_targets():
    assert set(REQUIRED) <= set(targets.names())
    for name in REQUIRED:
        spec = targets.get(name)
        assert spec.name == name
        assert spec.tvm_target().kind.name == spec.target["kind"]


def test_arm_targets_name_toolchain_emulator_and_runtime():
    a53 = targets.get("rasp3b")
    assert a53.target["mtriple"] == "aarch64-linux-gnu" and a53.target["mcpu"] == "cortex-a53"
    assert (a53.cross_compiler, a53.apt_package, a53.qemu, a53.qemu_cpu) == (
        "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "qemu-aarch64", "cortex-a53")
    assert a53.board == "aarch64" and "apache-tvm==0.27.0.post1" in a53.runtime
    armv7 = targets.get("rasp3b-armv7")
    assert armv7.target["mfloat-abi"] == "hard" and armv7.target["mtriple"].endswith("gnueabihf")
    assert armv7.isa == "arm" and armv7.qemu == "qemu-arm" and armv7.board is None
    assert targets.get("rasp4b").target["mcpu"] == "cortex-a72"


def test_x86_host_features_come_from_cpuinfo():
    spec = targets.get("x86")
    flags = targets._cpu_flags()
    assert spec.features == tuple(f for f in targets._X86_FEATURES if f in flags)
    assert spec.target["mcpu"] != "generic"
    assert "avx512" not in json.dumps(targets.get("x86-avx2").features)


def test_cuda_arch():
    assert targets.get("cuda").target["arch"] == "sm_80"
    spec = targets.get("cuda", arch="sm_75")
    assert spec.target["arch"] == "sm_75" and spec.name == "cuda-sm_75"
    assert targets.get("cuda-sm_75").target == spec.target  # what compile_onnx looks up again
    with pytest.raises(BnnError, match="compute capability"):
        targets.get("cuda", arch="compute75")
    with pytest.raises(BnnError, match="--arch applies to cuda"):
        targets.get("rasp3b", arch="sm_75")


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(BnnError, match="unknown target 'rasp5'.*rasp3b-armv7"):
        targets.get("rasp5")


def test_user_target_from_json(tmp_path):
    path = tmp_path / "board.json"
    path.write_text(json.dumps({
        "name": "my-a55", "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"},
        "cross_compiler": "aarch64-linux-gnu-g++", "apt_package": "g++-aarch64-linux-gnu",
        "family": "arm", "isa": "aarch64",
    }))
    spec = targets.get(str(path))
    assert spec.name == "my-a55" and spec.elf_machine == 183
    assert targets.get("my-a55") is spec and "my-a55" in targets.names()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not JSON"),
        ('{"name": "t"}', "missing key 'target'"),
        ('{"name": "t", "target": {"kind": "llvm"}, "cpu": "x"}', "unknown key"),
        ('{"name": "t", "target": {"kind": "llvm", "mcpuu": "x"}}', "TVM refuses"),
        ('{"name": "x86", "target": {"kind": "llvm"}}', "built-in"),
    ],
)
def test_bad_user_target_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BnnError, match=message) as err:
        targets.get(str(path))
    assert str(path) in str(err.value)


def test_targets_command_lists_every_target(capsys):
    from bnn_tvm.cli import main

    assert main(["targets", "--json"]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert set(REQUIRED) <= set(listed)
    assert listed["rasp3b"]["target"]["mcpu"] == "cortex-a53"


# ---- cross compilation -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The default model compiled for x86, rasp3b and rasp3b-armv7, by the CLI."""
    out = tmp_path_factory.mktemp("cross")
    paths = {}
    for name in ("x86", "rasp3b", "rasp3b-armv7"):
        spec = targets.get(name)
        if spec.cross_compiler and shutil.which(spec.cross_compiler) is None:
            continue
        paths[name] = str(out / f"digits_{name}.so")
        subprocess.run([sys.executable, "-m", "bnn_tvm", "compile", "--target", name, "-o", paths[name]],
                       check=True, capture_output=True)
    return paths


@needs("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")
def test_rasp3b_library_is_aarch64(compiled):
    header = read_header(compiled["rasp3b"])
    assert (header.bits, header.machine, header.shared) == (64, 183, True), header.describe()


@needs("arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf")
def test_armv7_library_is_32_bit_hard_float(compiled):
    header = read_header(compiled["rasp3b-armv7"])
    assert (header.bits, header.machine) == (32, 40), header.describe()
    assert header.arm_hard_float and header.arm_eabi_version == 5, header.describe()


@needs("qemu-arm", "qemu-user")
@needs("arm-linux-gnueabihf-gcc", "g++-arm-linux-gnueabihf")
def test_armv7_binary_kernels_match_x86_under_qemu_arm(compiled):
    from bnn_tvm.training.data import digits_split
    from bnn_tvm.frontend.export import default_model_path
    from bnn_tvm.targets.kernel_check import check_kernels, record_kernel_calls, target_constants

    x = digits_split()[2][:2]
    calls = record_kernel_calls(compiled["x86"], x)
    ops = {re.sub(r"\d*$", "", c.symbol) for c in calls}  # bnn_<op>[N]
    assert {"bnn_pack_sign", "bnn_binary_conv2d_threshold", "bnn_binary_dense_epilogue"} <= ops
    constants = target_constants(default_model_path(), "rasp3b-armv7")  # armv7's weight layouts
    assert set(constants) <= {c.symbol for c in calls}
    report = check_kernels(compiled["x86"], compiled["rasp3b-armv7"], "rasp3b-armv7", x, calls=calls, constants=constants)
    assert report.ok, "\n".join(report.lines())
    assert len(report.results) == len(calls)
    # The comparison can fail: a wrong expectation for one output word is caught.
    calls[-1].after[-1] = calls[-1].after[-1] + 1
    bad = check_kernels(compiled["x86"], compiled["rasp3b-armv7"], "rasp3b-armv7", x, calls=calls[-1:])
    assert not bad.ok and bad.results[0].differing > 0


def test_missing_cross_compiler_names_the_package(tmp_path):
    from bnn_tvm.compilation.compiler import compile_onnx

    path = tmp_path / "t.json"
    path.write_text(json.dumps({
        "name": "no-toolchain", "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53"},
        "cross_compiler": "aarch64-nowhere-g++", "apt_package": "g++-aarch64-nowhere", "isa": "aarch64",
    }))
    model = compile_onnx(default_model_path(), str(path))
    with pytest.raises(BnnError, match="apt-get install g\\+\\+-aarch64-nowhere"):
        model.export(str(tmp_path / "m.so"))
    assert not (tmp_path / "m.so").exists()


def test_compile_arch_option_is_cuda_only(capsys):
    from bnn_tvm.cli import main

    assert main(["compile", "--target", "x86", "--arch", "sm_75"]) != 0
    assert "--arch applies to cuda" in capsys.readouterr().err


def test_a_program_under_qemu_user_fails_naming_what_ran():
    """``targets.qemu_user.run_emulated``, which the kernel checker and the standalone runner share:
    a missing emulator and a failing program each end in one BnnError that names what ran."""
    import dataclasses

    from bnn_tvm.targets.qemu_user import run_emulated

    spec = targets.get("rasp3b")
    with pytest.raises(BnnError, match="^probe runs under qemu-nowhere, which is not installed: apt-get install"):
        run_emulated(dataclasses.replace(spec, qemu="qemu-nowhere"), ["prog"], "probe", 10)


@needs("qemu-aarch64", "qemu-user")
def test_a_program_runs_under_the_targets_qemu_cpu_and_sysroot():
    from bnn_tvm.targets.qemu_user import run_emulated

    spec = targets.get("rasp3b")
    loader = "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1"  # an aarch64 program of the cross sysroot
    assert "--list" in run_emulated(spec, [loader, "--help"], "probe", 60).stdout
    with pytest.raises(BnnError, match="^probe: the run under qemu-aarch64 failed \\(code 1\\): .*unrecognized option"):
        run_emulated(spec, [loader, "--no-such-option"], "probe", 60)
