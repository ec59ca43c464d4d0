"""One module per CLI command; each has ``add_parser(subparsers)`` and ``run(args) -> int``."""

COMMANDS = ["train", "export", "compile", "run", "verify", "targets", "board", "tracker", "summary", "inspect", "bench", "tune"]
