"""The emulated board's RPC server; runs under qemu with the board's aarch64 Python and TVM runtime.

It is TVM's own RPC server (``tvm.rpc.server``: one forked session process per client, modules
uploaded and loaded through the usual ``tvm.rpc.server.*`` functions), started without the
popen worker that ``python -m tvm.exec.rpc_server`` uses: that worker re-executes the
interpreter, which under qemu-user would need binfmt_misc.  Beside it, extra global functions:
one counts the guest instructions of a call when the board runs with the counting plugin, one
runs an uploaded ONNX model in the board's ONNX Runtime (``bench``'s ``ort_fp32`` engine),
timed and counted the same way.

Standalone on purpose: only the standard library, numpy, tvm and onnxruntime are importable on
the board.
"""

import argparse
import ctypes
import logging
import os
import sys

MARKER_SYSCALL = 4242  # must match insn_count.c
MARKER_START, MARKER_STOP = 1, 2


def counted(call):
    """Executed guest instructions of ``call()``, bracketed by plugin markers: exactly the
    instructions between the two marker system calls, of every thread of the process."""
    out = os.environ.get("BNN_INSN_OUT")
    if not out:
        raise RuntimeError(
            "this board runs without the instruction-counting plugin; "
            "start it with `python -m bnn_tvm board start --count-instructions`"
        )
    libc = ctypes.CDLL(None, use_errno=True)
    result_path = f"{out}.{os.getpid()}"
    if os.path.exists(result_path):
        os.remove(result_path)
    libc.syscall(MARKER_SYSCALL, MARKER_START)
    call()
    libc.syscall(MARKER_SYSCALL, MARKER_STOP)
    with open(result_path) as f:
        count = int(f.read())
    os.remove(result_path)
    return count


def count_instructions(module, func_name, *args):
    """Executed guest instructions of ``module[func_name](*args)``, bracketed by plugin markers."""
    func = module[func_name]
    return counted(lambda: func(*args))


def kernel_counts(vm_module, func_name, *args):
    """Executed guest instructions of each kernel that ``vm_module[func_name](*args)`` calls (a
    Relax VM), summed per kernel name: the VM's instrument hook brackets every call with the
    plugin's markers. Each count includes the hook's own way back into the VM and out to the
    next hook (a few thousand instructions of Python and FFI, the same for every call): the
    VM builtins (``vm.builtin.*``, cheap C++ calls) show its size. Returns a JSON string
    ``{name: [calls, instructions]}``."""
    import json

    out = os.environ.get("BNN_INSN_OUT")
    if not out:
        raise RuntimeError("this board runs without the instruction-counting plugin")
    libc = ctypes.CDLL(None, use_errno=True)
    result_path = f"{out}.{os.getpid()}"
    totals = {}

    def instrument(func, symbol, before_run, ret_value, *_):
        if before_run:
            libc.syscall(MARKER_SYSCALL, MARKER_START)
            return 0
        libc.syscall(MARKER_SYSCALL, MARKER_STOP)
        with open(result_path) as f:
            count = int(f.read())
        calls, total = totals.get(str(symbol), (0, 0))
        totals[str(symbol)] = (calls + 1, total + count)
        return 0  # VMInstrumentReturnKind.NO_OP

    vm_module["set_instrument"](instrument)
    try:
        vm_module[func_name](*args)
    finally:
        vm_module["set_instrument"](None)
    return json.dumps(totals)


def ort_bench(model_file, input_file, output_file, threads, repeat, count, budget_s=0.0):
    """Run the uploaded ONNX ``model_file`` on the uploaded ``input_file`` (``.npy``) in ONNX
    Runtime, with what ``bench``'s x86 ``ort_fp32`` engine uses: CPU provider, all graph
    optimisations, ``threads`` intra-op threads, one inter-op thread. Writes the outputs of one
    run to ``output_file`` (``.npz``, ``out0``, ``out1``, ...), times ``repeat`` further runs
    (``session.run``, as on x86; fewer, at least one, once they took ``budget_s`` seconds if that
    is positive: a float ResNet-18 takes about 20 s a run under qemu) and, if ``count``, counts
    the executed instructions of ``count`` more runs (warm: arena and kernels set up by the runs
    before). Unlike a TVM module's, ONNX Runtime's count varies from run to run in one process
    (the reference layer: 42.58-43.25 M, with or without Python's garbage collector; its
    allocations through glibc's malloc are the likely cause), so the median of several is
    reported. Files are in the session's folder; returns a JSON string."""
    import json
    import time

    import numpy as np
    import tvm_ffi

    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeError(f"this board's Python has no onnxruntime ({err}); a root set up by bnn_tvm from "
                           "this version on has it: stop the board and start it again to upgrade") from err
    workpath = tvm_ffi.get_global_func("tvm.rpc.server.workpath")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(workpath(model_file), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.load(workpath(input_file))}
    outputs = session.run(None, feed)
    np.savez(workpath(output_file), **{f"out{i}": o for i, o in enumerate(outputs)})
    times = []
    for _ in range(int(repeat)):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
        if budget_s > 0 and sum(times) > budget_s * 1e3:
            break
    samples = [counted(lambda: session.run(None, feed)) for _ in range(int(count))]
    instructions = sorted(samples)[len(samples) // 2] if samples else None  # the median (an odd count)
    return json.dumps({"times_ms": times, "instructions": instructions, "instruction_samples": samples,
                       "version": ort.__version__,
                       "threads": int(threads), "optimization": "ORT_ENABLE_ALL"})


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
    tvm_ffi.register_global_func("bnn.board.kernel_counts", kernel_counts, override=True)
    tvm_ffi.register_global_func("bnn.board.ort_bench", ort_bench, override=True)
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
