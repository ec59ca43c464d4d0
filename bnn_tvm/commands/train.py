"""``python -m bnn_tvm train``: train a zoo model and its float twin on scikit-learn digits."""

from __future__ import annotations


class _QuantizerNames:
    """The registered quantizers of one role, listed only when help is printed: the registry
    imports torch (seconds), which no other command's start-up should pay. argparse fills a help
    string's ``%(name)s`` from the action's attributes and formats this object with ``str``."""

    def __init__(self, role: str):
        self.role = role

    def __str__(self) -> str:
        from ..training import quantizers

        return ", ".join(quantizers.names(self.role))


def add_parser(sub) -> None:
    s = sub.add_parser(
        "train",
        help="train a zoo model and its float twin on scikit-learn digits",
        description="Train a zoo model and its float twin on scikit-learn digits (75/25 split). Models whose "
        "input is not 1x8x8 train on the digits upsampled (nearest) to their input size, grey repeated per channel.",
    )
    s.add_argument("--model", default="digits", help="zoo model name (default: digits)")
    s.add_argument("--quantizer", help="activation quantizer (%(quantizers)s); default: the model's"
                   ).quantizers = _QuantizerNames("activation")
    s.add_argument("--kernel-quantizer", help="weight quantizer (%(quantizers)s); default: the model's"
                   ).quantizers = _QuantizerNames("weight")
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
