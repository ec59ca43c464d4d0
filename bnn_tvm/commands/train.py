"""``python -m bnn_tvm train``: train a zoo model and its float twin on scikit-learn digits."""

from __future__ import annotations

from ..training import quantizers


def add_parser(sub) -> None:
    s = sub.add_parser(
        "train",
        help="train a zoo model and its float twin on scikit-learn digits",
        description="Train a zoo model and its float twin on scikit-learn digits (75/25 split). Models whose "
        "input is not 1x8x8 train on the digits upsampled (nearest) to their input size, grey repeated per channel.",
    )
    s.add_argument("--model", default="digits", help="zoo model name (default: digits)")
    s.add_argument("--quantizer", help=f"activation quantizer ({', '.join(quantizers.names('activation'))}); default: the model's")
    s.add_argument("--kernel-quantizer", help=f"weight quantizer ({', '.join(quantizers.names('weight'))}); default: the model's")
    s.add_argument("--epochs", type=int, default=40)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--lr", type=float, default=5e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--metrics", help="write test_accuracy and float_test_accuracy (fractions) to this JSON file")
    s.add_argument("-o", "--output", required=True, help="checkpoint path (.pt)")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..training import models
    from ..errors import BnnError
    from ..training.train import DIGITS_SHAPE, TrainConfig, save_checkpoint, train, write_metrics

    if args.epochs < 1:
        raise BnnError(f"--epochs must be >= 1, got {args.epochs}")
    # Fail on a bad model or quantizer name before training anything.
    options = models.options(args.model, args.quantizer, args.kernel_quantizer)
    if models.entry(args.model).fixed_form:
        raise BnnError(f"{args.model} does not train on digits (its input is {models.input_shape(args.model)}); "
                       "its zoo form has random weights, for latency and exactness")
    shape = models.input_shape(args.model)
    if shape != DIGITS_SHAPE:
        print(f"note: {args.model} takes {'x'.join(map(str, shape))} inputs: training on digits upsampled to that size")
    config = TrainConfig(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        input_quantizer=options["input_quantizer"], kernel_quantizer=options["kernel_quantizer"],
    )
    checkpoint = train(config)
    save_checkpoint(checkpoint, args.output)
    metrics = checkpoint["metrics"]
    if args.metrics:
        write_metrics(metrics, args.metrics)
    print(f"saved {args.output}")
    print(
        f"test accuracy: binarized {metrics['test_accuracy']:.4f}, float twin {metrics['float_test_accuracy']:.4f} "
        f"({args.model}, {options['input_quantizer']}/{options['kernel_quantizer']}, {args.epochs} epochs)"
    )
    return 0
