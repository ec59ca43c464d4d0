"""The emulated board's RPC server; runs under qemu with the board's aarch64 Python and TVM runtime.

It is TVM's own RPC server (``tvm.rpc.server``: one forked session process per client, modules
uploaded and loaded through the usual ``tvm.rpc.server.*`` functions), started without the
popen worker that ``python -m tvm.exec.rpc_server`` uses: that worker re-executes the
interpreter, which under qemu-user would need binfmt_misc.  Beside it, one extra global
function counts the guest instructions of a call when the board runs with the counting plugin.

Standalone on purpose: only the standard library and tvm are importable on the board.
"""

import argparse
import ctypes
import logging
import os
import sys

MARKER_SYSCALL = 4242  # must match insn_count.c
MARKER_START, MARKER_STOP = 1, 2


def count_instructions(module, func_name, *args):
    """Executed guest instructions of ``module[func_name](*args)``, bracketed by plugin markers."""
    out = os.environ.get("BNN_INSN_OUT")
    if not out:
        raise RuntimeError(
            "this board runs without the instruction-counting plugin; "
            "start it with `python -m bnn_tvm board start --count-instructions`"
        )
    func = module[func_name]
    libc = ctypes.CDLL(None, use_errno=True)
    result_path = f"{out}.{os.getpid()}"
    if os.path.exists(result_path):
        os.remove(result_path)
    libc.syscall(MARKER_SYSCALL, MARKER_START)
    func(*args)
    libc.syscall(MARKER_SYSCALL, MARKER_STOP)
    with open(result_path) as f:
        count = int(f.read())
    os.remove(result_path)
    return count


def board_info():
    import json
    import platform

    import tvm

    return json.dumps(
        {
            "machine": platform.machine(),
            "cpu": os.environ.get("QEMU_CPU", ""),
            "tvm": tvm.__version__,
            "threads": os.environ.get("TVM_NUM_THREADS", ""),
            "counting": bool(os.environ.get("BNN_INSN_OUT")),
        }
    )


def survive_dead_sessions(server):
    """Keep serving when a session process dies (killed, crashed): TVM's ``_serving`` raises
    RuntimeError for a session that exited unsuccessfully, which would end the listening loop,
    the whole board and its tracker registration with it. The next client is served instead."""
    serving = server._serving

    def serving_through_dead_sessions(sock, addr, opts, load_library):
        cwd = os.getcwd()  # _serving moves into a per-session folder and returns only on success
        try:
            serving(sock, addr, opts, load_library)
        except RuntimeError as err:
            logging.warning("session from %s ended abnormally (%s); serving the next client", addr, err)
            os.chdir(cwd)
            sock.close()

    server._serving = serving_through_dead_sessions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--port-end", type=int, default=9199)
    parser.add_argument("--tracker", help="HOST:PORT of an RPC tracker to register with")
    parser.add_argument("--key", default="")
    parser.add_argument("--custom-addr", help="address reported to the tracker")
    parser.add_argument("--load-library", help="libraries to load into each session, ':'-separated")
    parser.add_argument("--port-file", help="where to write the port bound, once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s board %(levelname)s %(message)s")

    import tvm_ffi
    from tvm.rpc import server

    survive_dead_sessions(server)
    tvm_ffi.register_global_func("bnn.board.count_instructions", count_instructions, override=True)
    tvm_ffi.register_global_func("bnn.board.info", board_info, override=True)
    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    state = server.PopenRPCServerState(
        args.host,
        args.port,
        args.port_end,
        tracker_addr=tracker,
        key=args.key,
        load_library=args.load_library,
        custom_addr=args.custom_addr,
    )
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(state.port))
        os.replace(tmp, args.port_file)
    state.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
