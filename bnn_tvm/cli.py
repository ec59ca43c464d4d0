"""``python -m bnn_tvm COMMAND``: train, export, compile, run, verify."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .errors import BnnError
from .export import default_checkpoint_path, default_model_path


def cmd_train(args) -> int:
    from . import models
    from .train import TrainConfig, save_checkpoint, train, write_metrics

    models.build(args.model)  # fail on a bad name before training anything
    checkpoint = train(TrainConfig(model=args.model, epochs=args.epochs, seed=args.seed, learning_rate=args.lr))
    save_checkpoint(checkpoint, args.output)
    metrics = checkpoint["metrics"]
    if args.metrics:
        write_metrics(metrics, args.metrics)
    print(f"saved {args.output}")
    print(
        f"test accuracy: binarized {metrics['test_accuracy']:.4f}, "
        f"float twin {metrics['float_test_accuracy']:.4f} ({args.model}, {args.epochs} epochs)"
    )
    return 0


def cmd_export(args) -> int:
    from . import models
    from .export import export_onnx
    from .train import load_checkpoint

    model, checkpoint = load_checkpoint(args.checkpoint)
    export_onnx(model, models.input_shape(checkpoint["model"]), args.output)
    print(f"exported {args.output}")
    return 0


def cmd_compile(args) -> int:
    from .compiler import compile_onnx

    path = args.model or default_model_path()
    compiled = compile_onnx(path, args.target, batch=args.batch)
    output = args.output or os.path.splitext(os.path.basename(path))[0] + f"_{args.target}.so"
    compiled.export(output)
    for line in compiled.metadata["fused"]:
        print(f"fused: {line}")
    print(f"compiled {path} for {args.target} -> {output} ({os.path.getsize(output)} bytes)")
    return 0


def cmd_run(args) -> int:
    from .io import atomic_write
    from .runtime import CompiledRunner

    runner = CompiledRunner.load(args.module)
    try:
        x = np.load(args.input)
    except (OSError, ValueError) as err:
        raise BnnError(f"cannot read input {args.input}: {err}") from err
    outputs = runner.run(x, source=args.input)
    atomic_write(args.output, lambda tmp: np.save(tmp, outputs[0]))
    print(f"wrote {args.output}: shape {outputs[0].shape}")
    return 0


def cmd_verify(args) -> int:
    from .verify import verify

    x = labels = None
    extra = {}
    path = args.model
    if path is None:
        from .data import digits_split
        from .train import accuracy, load_checkpoint

        path = default_model_path()
        _, _, x, labels = digits_split()
        if os.path.isfile(default_checkpoint_path()):
            model, _ = load_checkpoint(default_checkpoint_path())
            extra["pytorch"] = accuracy(model, x, labels)
    report = verify(path, args.target, x=x, labels=labels, batch=args.batch, extra_accuracy=extra)
    for line in report.lines():
        print(line)
    if "pytorch" in report.accuracy and report.accuracy["pytorch"] != report.accuracy["bnn_tvm"]:
        print("VERIFY FAILED: compiled accuracy differs from the PyTorch model's")
        return 1
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bnn_tvm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("train", help="train a zoo model and its float twin on scikit-learn digits")
    s.add_argument("--model", default="digits")
    s.add_argument("--epochs", type=int, default=40)
    s.add_argument("--lr", type=float, default=5e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--metrics", help="write test_accuracy and float_test_accuracy to this JSON file")
    s.add_argument("-o", "--output", required=True, help="checkpoint path (.pt)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("export", help="export a checkpoint to ONNX")
    s.add_argument("checkpoint")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("compile", help="compile an ONNX model (default: the bundled digits model)")
    s.add_argument("model", nargs="?")
    s.add_argument("--target", default="x86")
    s.add_argument("--batch", type=int, help="batch size compiled in (default: the model's, else 1)")
    s.add_argument("-o", "--output")
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("run", help="run a compiled module on a .npy batch")
    s.add_argument("module")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("verify", help="compile, run and compare bit for bit with ONNX Runtime")
    s.add_argument("model", nargs="?")
    s.add_argument("--target", default="x86")
    s.add_argument("--batch", type=int)
    s.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BnnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
