"""The command forms, driven as a user drives them, and their errors on bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import helper
from onnx_builders import GraphBuilder, save

from bnn_tvm.cli import main
from bnn_tvm.training.data import digits_split
from bnn_tvm.frontend.export import default_model_path
from bnn_tvm.compilation.reference import reference_outputs
from bnn_tvm.frontend.onnx_import import load_onnx


@pytest.fixture(scope="module")
def compiled_default(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "digits.so"
    assert main(["compile", "--target", "x86", "-o", str(out)]) == 0
    return out


def test_compile_then_run_matches_reference(compiled_default, tmp_path):
    _, _, x_test, y_test = digits_split()
    x = x_test[:37]  # not a multiple of the compiled batch
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(compiled_default), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    ours = np.load(tmp_path / "y.npy")
    theirs = reference_outputs(load_onnx(default_model_path()), x, "input")[0]
    assert ours.shape == (37, 10)
    assert np.max(np.abs(ours - theirs)) <= 1e-5 * np.max(np.abs(theirs))
    assert np.mean(ours.argmax(1) == y_test[:37]) > 0.9


def test_verify_default_model_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "bnn_tvm", "verify", "--target", "x86"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "binary activations: all 3 tensors identical" in proc.stdout
    assert "accuracy (pytorch)" in proc.stdout and "VERIFY OK" in proc.stdout


def test_verify_takes_a_zoo_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path))  # the exported zoo model goes here
    assert main(["verify", "bmlp"]) == 0
    printed = capsys.readouterr().out
    assert "binary activations: all 3 tensors identical" in printed and "VERIFY OK" in printed
    assert (tmp_path / "models" / "bmlp.onnx").is_file()
    assert main(["verify", "nosuchmodel"]) == 2
    assert "'nosuchmodel' is neither a file nor a zoo model" in capsys.readouterr().err


def test_a_checkpoint_is_a_model_for_every_command(tmp_path, monkeypatch, capsys):
    """compile, inspect, verify (and bench, summary, tune) take a checkpoint written by `train`;
    it is exported once per content, so a retrained checkpoint is exported again."""
    import shutil

    import torch

    from bnn_tvm.frontend.export import default_checkpoint_path

    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    shutil.copy(default_checkpoint_path(), tmp_path / "mine.pt")
    assert main(["compile", "mine.pt", "--target", "x86"]) == 0
    assert (tmp_path / "mine_x86.so").is_file()  # named after the checkpoint, not its export
    assert main(["inspect", "mine.pt"]) == 0
    assert "nodes run in binary kernels" in capsys.readouterr().out
    exported = sorted((tmp_path / "cache" / "models").iterdir())
    assert len(exported) == 1 and exported[0].name.startswith("mine-")

    checkpoint = torch.load(tmp_path / "mine.pt", weights_only=True)
    first = next(k for k, v in checkpoint["state_dict"].items() if v.dtype == torch.float32 and v.dim() == 4)
    checkpoint["state_dict"][first] = -checkpoint["state_dict"][first]  # "retrained"
    torch.save(checkpoint, tmp_path / "mine.pt")
    assert main(["verify", "mine.pt"]) == 0
    assert "VERIFY OK" in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 2

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    for bad, why in (("other.pt", "no 'model' entry"), ("empty.pt", "empty or cut short")):
        assert main(["compile", bad, "--target", "x86", "-o", "o.so"]) == 2
        err = capsys.readouterr().err
        assert f"{bad}: not a bnn_tvm checkpoint" in err and why in err and "torch.onnx.export" in err
    assert not (tmp_path / "o.so").exists()


def test_run_rejects_wrong_input_shape(compiled_default, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((2, 1, 8, 9), np.float32))
    code = main(["run", str(compiled_default), "--input", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "y.npy")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.npy" in err and "(2, 1, 8, 9)" in err and "(N, 1, 8, 8)" in err
    assert not (tmp_path / "y.npy").exists()


def test_compile_rejects_a_non_onnx_file(tmp_path, capsys):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is not a protobuf\n" * 10)
    assert main(["compile", str(bogus), "--target", "x86", "-o", str(tmp_path / "o.so")]) == 2
    err = capsys.readouterr().err
    assert "notes.onnx" in err and "not an ONNX model" in err
    assert not (tmp_path / "o.so").exists()


def test_compile_names_the_unsupported_node(tmp_path, capsys):
    g = GraphBuilder([1, 3, 4, 4])
    a = g.binarize("x")
    g.nodes.append(helper.make_node("FancyBinaryThing", [a], ["y"], name="my_fancy_node", domain="acme.ops"))
    path = save(g.model(["y"]), tmp_path / "custom.onnx")
    assert main(["compile", path, "--target", "x86", "-o", str(tmp_path / "o.so")]) == 2
    err = capsys.readouterr().err
    assert "my_fancy_node" in err and "FancyBinaryThing" in err and "custom.onnx" in err


def test_missing_model_and_unknown_target(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "nope.onnx")]) == 2
    assert "nope.onnx" in capsys.readouterr().err
    assert main(["compile", "--target", "vax11"]) == 2
    assert "vax11" in capsys.readouterr().err


def test_verify_for_a_board_target_asks_for_the_board(capsys):
    """A module for the Pi does not load here: ``verify`` says how to reach a board before it
    compiles anything (it used to fail in TVM with "architecture mismatch")."""
    assert main(["verify", "--target", "rasp3b"]) == 2
    err = capsys.readouterr().err
    assert "rasp3b does not run on this host" in err and "--tracker" in err


@pytest.mark.parametrize("command", ["bench", "verify", "tune"])
@pytest.mark.parametrize("options, message", [
    (["--rpc", "nohost"], "--rpc 'nohost': expected HOST:PORT"),
    (["--tracker", "127.0.0.1:x"], "--tracker '127.0.0.1:x': expected HOST:PORT"),
    (["--rpc", "127.0.0.1:1", "--tracker", "127.0.0.1:2"], "--rpc and --tracker: give one of them"),
    (["--key", "pi"], "--key pi: the key of a board at --tracker HOST:PORT"),
])
def test_board_options_are_checked_before_any_work(command, options, message, capsys):
    """``--rpc``/``--tracker``/``--key`` become one ``Endpoint``, checked when the command
    starts: one line naming the option, exit 2, before anything is compiled or contacted."""
    assert main([command, "--target", "rasp3b", *options]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_an_endpoint_says_which_keys_a_client_tries():
    from bnn_tvm.devices.endpoint import Endpoint

    assert not Endpoint().remote and Endpoint().label("rasp3b") == "this machine"
    direct = Endpoint(rpc="10.0.0.2:9090")
    assert direct.remote and direct.address == ("10.0.0.2", 9090)
    assert direct.keys("rasp3b") == ["rasp3b", ""]  # ours, then a plain `tvm.exec.rpc_server`'s
    tracked = Endpoint(tracker="127.0.0.1:9190")
    assert tracked.keys("rasp3b") == ["rasp3b"] and tracked.label("rasp3b") == "key 'rasp3b' of tracker 127.0.0.1:9190"
    assert Endpoint(rpc="h:1", key="k").keys("rasp3b") == ["k"]
    assert Endpoint(rpc="h:1", key="k").label("rasp3b") == "RPC server h:1"


def test_atomic_outputs_get_the_mode_a_plain_write_would(tmp_path):
    """Written via mkstemp (owner-only), an output still gets 0666 less the umask, and a file
    that is replaced keeps its mode."""
    import os
    import stat

    from bnn_tvm.atomic_files import atomic_write

    saved = os.umask(0o022)
    try:
        out = tmp_path / "sub" / "report.json"
        atomic_write(str(out), lambda tmp: open(tmp, "w").write("{}\n"))
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        out.chmod(0o640)
        atomic_write(str(out), lambda tmp: open(tmp, "w").write("[]\n"))
        assert stat.S_IMODE(out.stat().st_mode) == 0o640 and out.read_text() == "[]\n"
    finally:
        os.umask(saved)
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temporary left


def test_compile_shows_its_stages(tmp_path, capsys):
    """`compile` draws a progress bar over its stages (a large model takes tens of seconds)."""
    assert main(["compile", "--target", "x86", "-o", str(tmp_path / "digits.so")]) == 0
    err = capsys.readouterr().err
    assert "compile digits.onnx" in err and "3/3" in err and "LLVM build" in err


def test_run_writes_every_output_to_an_npz(tmp_path, capsys):
    """A model with two outputs: FILE.npz keeps both under their ONNX names; FILE.npy keeps the
    first and says what was left out."""
    g = GraphBuilder([2, 32, 6, 6])
    conv = g.conv(g.binarize("x"), g.binary_weight((32, 32, 3, 3)), pad=1)
    pooled = g.node("GlobalAveragePool", [conv])
    path = save(g.model([conv, pooled]), tmp_path / "two_outputs.onnx")
    assert main(["compile", path, "--target", "x86", "-o", str(tmp_path / "m.so")]) == 0
    x = np.random.default_rng(0).standard_normal((3, 32, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = reference_outputs(load_onnx(path), x, "x")
    assert main(["run", str(tmp_path / "m.so"), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npz")]) == 0
    saved = np.load(tmp_path / "y.npz")
    assert sorted(saved.files) == sorted([conv, pooled])
    for name, reference in zip([conv, pooled], expected):
        np.testing.assert_allclose(saved[name], reference, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "m.so"), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected[0], rtol=1e-5, atol=1e-5)
    assert "2 outputs" in capsys.readouterr().out


def test_an_output_that_cannot_be_written_is_named(compiled_default, tmp_path, capsys):
    """`run` (like every command's output) into a folder that cannot be made: a clear error
    naming the file, no traceback, nothing written."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    x = digits_split()[2][:2]
    np.save(tmp_path / "x.npy", x)
    target = blocker / "y.npy"
    assert main(["run", str(compiled_default), "--input", str(tmp_path / "x.npy"), "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {target}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "x.npy"]


def test_every_package_of_the_tree_is_installed():
    """``pip install .`` installs the packages pyproject.toml lists, no more: a sub-package left
    out (``bnn_tvm.commands`` was) breaks the installed CLI while the editable one works."""
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {folder: package for package, folder in setuptools["package-dir"].items()}  # relay_passes -> bnn_tvm.relay_passes
    tops = [top for top in root.iterdir() if (top / "__init__.py").is_file()]
    found = set()
    for top in tops:
        for init in top.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((folders.get(parts[0], parts[0]),) + parts[1:]))
    assert found == listed
    # no generic top-level name: every installed package lives under bnn_tvm
    assert {name.split(".")[0] for name in listed} == {"bnn_tvm"}


def test_parsing_and_help_do_not_import_torch():
    """Start-up (every command's parser and help, and an ONNX file as the model) imports neither
    torch (seconds) nor onnx; ``train --help`` still lists the registry's quantizers, read only
    when that help is printed."""
    script = """
import sys
from bnn_tvm.cli import parser
from bnn_tvm.frontend.export import default_model_path, resolve_model
p = parser()
sub = next(a for a in p._actions if a.choices and "compile" in a.choices).choices
help_texts = {name: s.format_help() for name, s in sub.items() if name != "train"}
p.parse_args(["compile", default_model_path(), "-o", "m.so"])
assert resolve_model(default_model_path()) == default_model_path()
print(sorted(m for m in ("torch", "onnx") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    train_help = subprocess.run([sys.executable, "-m", "bnn_tvm", "train", "--help"], capture_output=True, text=True)
    assert "activation quantizer (ste_sign, approx_sign" in train_help.stdout
    assert "magnitude_aware_sign" in train_help.stdout
