"""``python -m bnn_tvm COMMAND``: the binarized-network compiler's command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from .commands import COMMANDS
from .errors import BnnError
from .atomic_files import private_tempdir


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bnn_tvm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # board and tracker start servers that outlive the command: they keep the system's $TMPDIR
    temporary = contextlib.nullcontext() if args.command in ("board", "tracker") else private_tempdir()
    try:
        with temporary:
            return args.func(args)
    except BnnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
