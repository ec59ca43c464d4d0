"""``python -m bnn_tvm train``: train a zoo model and its float twin on scikit-learn digits."""

from __future__ import annotations


def add_parser(sub) -> None:
    s = sub.add_parser("train", help="train a zoo model and its float twin on scikit-learn digits")
    s.add_argument("--model", default="digits")
    s.add_argument("--epochs", type=int, default=40)
    s.add_argument("--lr", type=float, default=5e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--metrics", help="write test_accuracy and float_test_accuracy to this JSON file")
    s.add_argument("-o", "--output", required=True, help="checkpoint path (.pt)")
    s.set_defaults(func=run)


def run(args) -> int:
    from .. import models
    from ..train import TrainConfig, save_checkpoint, train, write_metrics

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

