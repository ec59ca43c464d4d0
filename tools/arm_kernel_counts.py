#!/usr/bin/env python3
"""Executed instructions per kernel of a compiled model on the emulated ARM board.

    python -m bnn_tvm board start --target rasp3b --port 9090
    python tools/arm_kernel_counts.py birealnet18 --target rasp3b --rpc 127.0.0.1:9090
    python tools/arm_kernel_counts.py --layer conv3x3:64x56x56 --rpc 127.0.0.1:9090

The model is compiled here for ``--target``, run once on the board (qemu-user with the counting
plugin), and the Relax VM's instrument hook brackets every kernel call with the plugin's
markers (``bnn.board.kernel_counts`` in ``qemu_board/board_server.py``): the table gives each
kernel's executed instructions, summed over its calls. Each call's count includes the hook's
own return into the VM (Python and FFI): the cheapest VM builtin call shows that overhead, which
the ``net`` column subtracts. The counts are deterministic; ``bench --count-instructions`` gives
the whole run's count without the hook.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def session_kernel_counts(remote, module_path: str, x) -> dict[str, tuple[int, int]]:
    """``{kernel: (calls, executed instructions)}`` of one run of the compiled ``module_path`` on
    ``x`` in the RPC session ``remote`` (an emulated board with the counting plugin)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    remote.upload(module_path)
    vm = VirtualMachine(remote.load_module(os.path.basename(module_path)), remote.cpu())
    vm.set_input("main", tvm.runtime.tensor(x, remote.cpu()))
    counts = remote.get_function("bnn.board.kernel_counts")(vm.module, "invoke_stateful", "main")
    return {name: tuple(value) for name, value in json.loads(str(counts)).items()}


def net_counts(counts: dict[str, tuple[int, int]]) -> tuple[dict[str, tuple[int, int]], int]:
    """The kernels' counts (``{kernel: (calls, instructions)}``) less the hook's overhead per
    call, estimated as the cheapest VM builtin call; and that overhead."""
    builtins = [total / calls for name, (calls, total) in counts.items() if name.startswith("vm.builtin.")]
    overhead = int(min(builtins)) if builtins else 0
    return {name: (calls, total - calls * overhead) for name, (calls, total) in counts.items()
            if not name.startswith("vm.builtin.")}, overhead


def kernel_counts(path: str, target: str, batch: int, rpc_address: str, key: str) -> dict[str, tuple[int, int]]:
    """``{kernel: (calls, executed instructions)}`` of one run of ``path`` on the board."""
    import numpy as np
    from tvm import rpc

    from bnn_tvm.compilation.compiler import compile_onnx
    from bnn_tvm.devices.processes import parse_address

    compiled = compile_onnx(path, target, batch)
    x = np.random.default_rng(0).standard_normal(compiled.metadata["input_shape"]).astype("float32")
    host, port = parse_address(rpc_address, "--rpc")
    with tempfile.TemporaryDirectory(prefix="bnn-arm-counts-") as folder:
        module = os.path.join(folder, "model.so")
        compiled.export(module)
        return session_kernel_counts(rpc.connect(host, port, key=key, session_timeout=600), module, x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="ONNX file or zoo name (default: the bundled model)")
    parser.add_argument("--layer", help="a bench layer spec instead of a model, e.g. conv3x3:64x56x56")
    parser.add_argument("--target", default="rasp3b")
    parser.add_argument("--rpc", required=True, help="HOST:PORT of the emulated board (board start)")
    parser.add_argument("--key", help="the board's key (default: the target name)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", help="write {kernel: [calls, instructions]} here")
    args = parser.parse_args()

    from bnn_tvm.frontend.export import resolve_model

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from kernel_times import layer_onnx

    with tempfile.TemporaryDirectory(prefix="bnn-arm-counts-") as folder:
        path, batch = layer_onnx(args.layer, folder) if args.layer else (resolve_model(args.model), args.batch)
        counts = kernel_counts(path, args.target, batch, args.rpc, args.key or args.target)
    kernels, overhead = net_counts(counts)
    total = sum(net for _, net in kernels.values())
    print(f"{os.path.basename(path)} on {args.target}: {total:,} executed instructions in kernels "
          f"(net of {overhead:,} per call of hook overhead, the cheapest VM builtin call)")
    print(f"{'net instructions':>18} {'%':>6} {'calls':>6}  kernel")
    for name, (calls, net) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"{net:18,} {100 * net / total:6.1f} {calls:6}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"overhead_per_call": overhead, "kernels": counts}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
