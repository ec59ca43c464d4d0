"""``python -m bnn_tvm tracker start|stop|status``: a local TVM RPC tracker (default 127.0.0.1:9190)."""

from __future__ import annotations

import sys

from ..devices.tracker import DEFAULT_HOST, DEFAULT_PORT
from ..devices import tracker
from ..devices.board import exposure_warning


def add_parser(sub) -> None:
    s = sub.add_parser("tracker", help="start/stop a local TVM RPC tracker that boards register with")
    s.add_argument("action", choices=["start", "stop", "status"])
    s.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                   "whoever reaches the tracker can request its boards, so another address is warned about)")
    s.add_argument("--port", type=int, help=f"port (start: default {DEFAULT_PORT}; stop: default every tracker, "
                   "as `board stop` stops every board)")
    s.set_defaults(func=run)


def run(args) -> int:
    if args.action == "start":
        warning = exposure_warning(args.host, args.port or tracker.DEFAULT_PORT, "RPC tracker (it hands out its boards)")
        if warning:
            print(warning, file=sys.stderr)
        state = tracker.start(args.host, args.port or tracker.DEFAULT_PORT)
        print(f"tracker listening on {state.address} (pid {state.pid}, log {state.log})")
    elif args.action == "stop":
        stopped = tracker.stop(args.port)
        if not stopped:
            print("no tracker started by bnn_tvm was running")
        for state in stopped:
            print(f"stopped tracker on {state.address} (pid {state.pid})")
    else:
        states = tracker.running()
        if not states:
            print("no tracker started by bnn_tvm is running")
        for state in states:
            keys = tracker.tracker_keys((state.host, state.port))
            shown = ", ".join(f"{k} ({free} free)" for k, free in sorted(keys.items())) or "no servers"
            print(f"tracker {state.address} (pid {state.pid}): {shown}")
    return 0
