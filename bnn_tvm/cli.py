"""``python -m bnn_tvm COMMAND``: the binarized-network compiler's command line."""

from __future__ import annotations

import argparse
import importlib
import sys

from .commands import COMMANDS
from .errors import BnnError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bnn_tvm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
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
