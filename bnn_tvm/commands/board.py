"""``python -m bnn_tvm board start|stop|status``: an emulated Raspberry Pi serving TVM RPC."""

from __future__ import annotations

import sys

from ..devices.board import DEFAULT_PORT
from ..devices import board


def add_parser(sub) -> None:
    s = sub.add_parser(
        "board",
        help="start/stop an emulated board (aarch64 TVM RPC server under qemu-user)",
        description="The first start sets up an aarch64 Python and TVM runtime under the cache dir "
        "(apt-get download + pip, about a minute); later starts take seconds.",
    )
    s.add_argument("action", choices=["start", "stop", "status", "setup"])
    s.add_argument("--target", default="rasp3b", help="aarch64 target to emulate (default rasp3b)")
    s.add_argument("--tracker", metavar="HOST:PORT", help="register with this RPC tracker")
    s.add_argument("--key", help="the key clients must give (default: the target name on 127.0.0.1, a random key "
                   "printed at start on any other --host); also names the board for stop")
    s.add_argument("--host", default="127.0.0.1", help="address the RPC server listens on (default 127.0.0.1: this "
                   "machine only; RPC runs any code a client sends, so another address is warned about)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"first port to try (default {DEFAULT_PORT})")
    s.add_argument("--threads", type=int, default=1, help="TVM worker threads on the board (default 1)")
    s.add_argument("--no-count-instructions", dest="count_instructions", action="store_false",
                   help="run without the instruction-counting QEMU plugin")
    s.set_defaults(func=run)


def run(args) -> int:
    if args.action == "setup":
        root = board.ensure_root()
        print(f"emulated board root ready at {root.path}")
    elif args.action == "start":
        warning = board.exposure_warning(args.host, args.port, "emulated board's RPC server")
        if warning:
            print(warning, file=sys.stderr)
        state = board.start(args.target, args.host, args.port, args.tracker, args.key,
                            count_instructions=args.count_instructions, threads=args.threads)
        where = f", registered with tracker {state.tracker} as key {state.key!r}" if state.tracker else ""
        print(f"board {state.name} ({state.target}) serving TVM RPC on {state.address}{where} "
              f"(pid {state.pid}, user {state.user}, log {state.log})")
        if state.key != state.target and not args.key:
            print(f"note: the board answers only to key {state.key!r} (random, as it is reachable from other "
                  f"machines): clients give --key {state.key}. It keeps out clients that do not know it; it is no "
                  "password (a tracker lists its keys to anyone, and it crosses the network in clear)")
        if state.user_reason:
            print(f"note: the board runs as {state.user}, so code its clients send does too: {state.user_reason}")
    elif args.action == "stop":
        stopped = board.stop(args.key)
        if not stopped:
            print("no emulated board was running")
        for state in stopped:
            print(f"stopped board {state.name} on {state.address} (pid {state.pid})")
    else:
        states = board.running()
        if not states:
            print("no emulated board is running")
        for state in states:
            tracked = f", tracker {state.tracker} key {state.key!r}" if state.tracker else ""
            print(f"board {state.name} ({state.target}) on {state.address}{tracked} (pid {state.pid})")
    return 0
