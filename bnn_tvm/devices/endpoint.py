"""Where a client reaches a board: ``--rpc HOST:PORT`` (an RPC server, directly) or
``--tracker HOST:PORT`` with ``--key KEY`` (a board registered with an RPC tracker), the options
of ``bench``, ``verify`` and ``tune``. One value, checked once when it is made, is what the
commands hand to the remote benchmark (``devices.remote``) and the tuner's runner."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BnnError
from .processes import parse_address
from .tracker import tracker_keys

TRACKER_CHECK_TIMEOUT_S = 10.0


KEY_HELP = "the board's key at the tracker (default: the target name)"


def add_endpoint_options(parser, rpc_help: str, tracker_help: str) -> None:
    """A client command's ``--rpc``, ``--tracker`` and ``--key`` (read by ``Endpoint.from_args``);
    ``rpc_help`` and ``tracker_help`` say what runs there."""
    parser.add_argument("--rpc", metavar="HOST:PORT", help=rpc_help)
    parser.add_argument("--tracker", metavar="HOST:PORT", help=tracker_help)
    parser.add_argument("--key", help=KEY_HELP)


@dataclass(frozen=True)
class Endpoint:
    """A board's address: ``rpc`` or ``tracker`` (``HOST:PORT``, at most one), and the ``key`` it
    answers to (None: the target name; a direct connection also tries ``""``, what
    ``python -m tvm.exec.rpc_server`` on a Pi uses unless told otherwise). ``Endpoint()`` is this
    machine. A bad combination or a malformed address is refused here, naming the option."""

    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.rpc is not None and self.tracker is not None:
            raise BnnError("--rpc and --tracker: give one of them")
        for option, text in (("--rpc", self.rpc), ("--tracker", self.tracker)):
            if text is not None:
                parse_address(text, option)
        if self.key is not None and not self.remote:
            raise BnnError(f"--key {self.key}: the key of a board at --tracker HOST:PORT (or --rpc HOST:PORT); "
                           "give one of them")

    @classmethod
    def from_args(cls, args) -> Endpoint:
        """The endpoint of a command's ``--rpc``/``--tracker``/``--key`` options."""
        return cls(args.rpc, args.tracker, args.key)

    @property
    def remote(self) -> bool:
        """Whether the board is another machine (or the emulated board), not this one."""
        return self.rpc is not None or self.tracker is not None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the RPC server or of the tracker."""
        if self.rpc is not None:
            return parse_address(self.rpc, "--rpc")
        if self.tracker is not None:
            return parse_address(self.tracker, "--tracker")
        raise BnnError("this machine has no RPC address: give --rpc HOST:PORT or --tracker HOST:PORT")

    def keys(self, target: str) -> list[str]:
        """The keys to try, in order: ``key`` if given; else the target name (what this project's
        boards answer to on loopback), and for a direct connection then ``""``."""
        if self.key is not None:
            return [self.key]
        return [target] if self.tracker is not None else [target, ""]

    def connect_direct(self, target: str, session_timeout: float):
        """A TVM RPC session with the server at ``rpc``, trying ``keys(target)`` in order: a
        server refuses a client that brings another key (``board start --host 0.0.0.0`` answers
        only to its random key), and TVM says so with "cannot find server that matches key"."""
        from tvm import rpc

        if self.rpc is None:
            raise BnnError("a direct connection needs --rpc HOST:PORT")
        host, port = self.address
        keys = self.keys(target)
        for attempt, key in enumerate(keys, start=1):
            try:
                return rpc.connect(host, port, key=key, session_timeout=session_timeout)
            except Exception as err:  # TVM raises its own error types here
                if "matches key" not in str(err) or attempt == len(keys):
                    raise

    def label(self, target: str) -> str:
        """Where runs go, for messages and reports."""
        if self.rpc is not None:
            return f"RPC server {self.rpc}"
        if self.tracker is not None:
            return f"key {self.keys(target)[0]!r} of tracker {self.tracker}"
        return "this machine"

    def check_reachable(self, target: str) -> None:
        """Fail fast, with a BnnError that says why, when the board cannot be reached: the
        tracker has no board under the key, or nothing listens at the RPC address (TVM's own
        connect retries for seconds, and its tracker request waits for a board forever)."""
        if self.tracker is not None:
            key = self.keys(target)[0]
            keys = tracker_keys(self.address, timeout=TRACKER_CHECK_TIMEOUT_S)
            if key not in keys:
                known = ", ".join(f"{k} ({free} free)" for k, free in sorted(keys.items())) or "none"
                raise BnnError(f"tracker {self.tracker} has no server registered with key {key!r}; "
                               f"registered keys: {known}")
        elif self.rpc is not None:
            import socket

            try:
                socket.create_connection(self.address, timeout=TRACKER_CHECK_TIMEOUT_S).close()
            except OSError as err:
                raise BnnError(
                    f"no RPC server answers at {self.rpc} ({err.strerror or err}); is the board running? "
                    "(`python -m bnn_tvm board start`, or `python -m tvm.exec.rpc_server` on the Pi)"
                ) from err
