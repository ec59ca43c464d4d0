"""``python -m bnn_tvm bench``: the compiled binary model against the float engines."""

from __future__ import annotations

import json
import os

from bnn_tvm.relay_passes.conventions import SIGN_ZERO

from ..devices.endpoint import Endpoint, add_endpoint_options
from ..errors import BnnError
from bnn_tvm import targets
from ..atomic_files import atomic_write

ENGINE_NAMES = ("bnn_tvm", "tvm_fp32", "torch_fp32", "ort_fp32", "topi_bitserial")


def add_parser(sub) -> None:
    from ..frontend.export import MODEL_HELP

    s = sub.add_parser(
        "bench",
        help="benchmark the compiled binary model against TVM/PyTorch/ONNX Runtime fp32",
        description="Measure, in one run and with the same thread count, the compiled binary model "
        "(bnn_tvm), TVM's float build of the same ONNX (tvm_fp32), PyTorch on the float twin "
        "(torch_fp32, best of NCHW and channels_last), ONNX Runtime (ort_fp32) and, for single "
        "layers, TVM's untuned topi bitserial conv (topi_bitserial). Medians of repeated runs.",
    )
    s.add_argument("model", nargs="?", help=MODEL_HELP)
    s.add_argument("--layer", action="append", default=[], metavar="SPEC",
                   help="benchmark one binary conv layer instead, e.g. conv3x3:64x56x56 "
                   "(convKxK:CxHxW[,out=OC][,stride=S][,pad=P][,batch=N]); repeatable; 'resnet18' = all of ResNet-18's")
    s.add_argument("--target", default="x86")
    s.add_argument("--threads", type=int, default=1, help="threads for every engine (default 1)")
    s.add_argument("--batch", type=int, default=1, help="batch size for a model (layers: ,batch=N)")
    s.add_argument("--repeat", type=int, default=20, help="timed samples per engine (default 20)")
    s.add_argument("--engines", default=",".join(ENGINE_NAMES), help="comma-separated subset of " + ", ".join(ENGINE_NAMES))
    s.add_argument("--db", metavar="DIR", help="apply these tuning records to bnn_tvm (see `tune`)")
    s.add_argument("--json", metavar="FILE", help="write the results as JSON")
    s.add_argument("--plot", metavar="FILE.png", help="write a bar chart of the medians")
    add_endpoint_options(s, "run the TVM engines on a board's RPC server (and ort_fp32, ONNX Runtime's aarch64 "
                         "build, on the emulated board of an aarch64 target)",
                         "run the TVM engines (and ort_fp32, as --rpc) on a board from this RPC tracker")
    s.add_argument("--count-instructions", action="store_true", help="count executed instructions (emulated board); "
                   "on ARM targets also llvm-mca's estimated cycles per iteration of each binary kernel's inner loop "
                   "and per binary MAC (computed here from the assembly; needs llvm-mca)")
    s.add_argument("--sign-zero", choices=SIGN_ZERO, default="exact", help="Sign(0) for bnn_tvm (see `compile --help`)")
    s.set_defaults(func=run)


def targets_family(name: str) -> str:
    return targets.get(name).family


def run(args) -> int:
    if args.threads < 1:
        raise BnnError(f"--threads {args.threads}: must be at least 1")
    # TVM's thread pool reads this when it starts, i.e. at the first parallel kernel: set it first.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINE_NAMES]
    if unknown:
        raise BnnError(f"--engines: unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINE_NAMES)}")
    if "bnn_tvm" not in engines:
        engines.insert(0, "bnn_tvm")  # the reference every speedup is relative to
    if args.layer and args.model:
        raise BnnError("give either MODEL or --layer, not both")
    endpoint = Endpoint.from_args(args)

    if args.count_instructions and targets_family(args.target) == "arm":
        from bnn_tvm.targets.mca import llvm_mca

        llvm_mca()  # before the board run: its cycle estimates need llvm-mca here

    import tempfile

    from tqdm import tqdm

    from ..measure.bench.layers import parse_layers
    from ..measure.bench.report import plot, report_lines
    from ..measure.bench.run import benchmark
    from ..measure.bench.workload import Settings, layer_workload, model_workload

    settings = Settings(args.target, args.threads, args.repeat, endpoint=endpoint,
                        count_instructions=args.count_instructions, db=args.db, sign_zero=args.sign_zero)
    reports = []
    with tempfile.TemporaryDirectory(prefix="bnn-bench-model-") as workdir:
        if args.layer:
            workloads = [layer_workload(spec, workdir) for spec in parse_layers(args.layer)]
        else:
            from ..frontend.export import default_model_path

            workloads = [model_workload(args.model or default_model_path(), workdir, args.batch)]
        total = sum(len([e for e in engines if e != "topi_bitserial" or w.layer is not None]) for w in workloads)
        with tqdm(total=total, desc="bench", unit="engine") as progress:
            for workload in workloads:
                reports.append(benchmark(workload, settings, engines, progress))
    for report in reports:
        print("\n".join(report_lines(report)))
    if args.json:
        payload = reports[0] if len(reports) == 1 else {"layers": reports}
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(json.dumps(payload, indent=2) + "\n"))
    if args.plot:
        plot(reports, args.plot)
    return 0
