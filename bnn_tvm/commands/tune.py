"""``python -m bnn_tvm tune``: autotune a model's kernels with MetaSchedule into a database."""

from __future__ import annotations

from ..devices.endpoint import Endpoint, add_endpoint_options
from ..errors import BnnError

KINDS = {"all": ("binary", "float"), "binary": ("binary",), "float": ("float",)}


def add_parser(sub) -> None:
    from ..frontend.export import MODEL_HELP
    from ..measure.tune.search import DEFAULT_POPULATION, DEFAULT_TIMEOUT_S, DEFAULT_TRIALS

    s = sub.add_parser(
        "tune",
        help="autotune the model's kernels (MetaSchedule, XGBoost cost model) into a resumable database",
        description="Tune the binary kernels in a search space built from the hand-written schedules' "
        "knobs and the float kernels in MetaSchedule's default space. --trials N is the number of "
        "records the database should hold for this model and target: a killed run continues where it "
        "stopped when started again with the same N. Then `compile --db DIR` uses the tuned schedules.",
    )
    s.add_argument("model", nargs="?", help=MODEL_HELP)
    s.add_argument("--target", default="x86", help="a name from `python -m bnn_tvm targets`")
    s.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                   help=f"records the database should hold for this model (default {DEFAULT_TRIALS})")
    s.add_argument("--db", metavar="DIR", default="tuning_db", help="database folder (default: tuning_db)")
    add_endpoint_options(s, "measure on the RPC server at HOST:PORT",
                         "measure on a board from this RPC tracker")
    s.add_argument("--minutes", type=float, help="stop searching after this many minutes (records so far are kept)")
    s.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds per build and per measurement (default {DEFAULT_TIMEOUT_S:g})")
    s.add_argument("--batch", type=int, help="batch size compiled in (default: the model's, else 1)")
    s.add_argument("--tasks", choices=sorted(KINDS), default="all", help="which kernels to tune (default all)")
    s.add_argument("--population", type=int, default=DEFAULT_POPULATION,
                   help=f"evolutionary search population (default {DEFAULT_POPULATION})")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--plot", metavar="FILE.png", help="bar chart: untuned vs tuned time per task")
    s.add_argument("--compare", action="store_true",
                   help="afterwards, profile the model compiled without and with the database (x86 host only)")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..measure.tune.compare import compare_model
    from ..measure.tune.records import save_json
    from ..measure.tune.report import plot_report, report_lines
    from ..measure.tune.search import tune
    from ..frontend.export import resolve_model

    if args.timeout <= 0:
        raise BnnError(f"--timeout {args.timeout:g}: must be positive")
    if args.minutes is not None and not args.minutes > 0:
        raise BnnError(f"--minutes {args.minutes:g}: must be positive")
    if args.population < 4:
        raise BnnError(f"--population {args.population}: must be at least 4")
    result = tune(
        args.model, args.target, args.trials, args.db, endpoint=Endpoint.from_args(args),
        timeout=args.timeout, batch=args.batch, kinds=KINDS[args.tasks], population=args.population, seed=args.seed,
        minutes=args.minutes,
    )
    for line in report_lines(result.report):
        print(line)
    if args.compare:
        comparison = compare_model(resolve_model(args.model), args.target, args.db, args.batch)
        result.report["model_comparison"] = comparison
        save_json(result.report_path, result.report)
        print(f"model profiled {comparison['rounds']} times each way: binary kernels "
              f"{comparison['untuned']['binary_ms']:.3f} -> {comparison['tuned']['binary_ms']:.3f} ms "
              f"(x{comparison['binary_speedup']:.2f}), whole model {comparison['untuned']['model_ms']:.3f} -> "
              f"{comparison['tuned']['model_ms']:.3f} ms (x{comparison['model_speedup']:.2f})")
        limit = comparison["popcount_limit"]
        if limit["binary_speedup_at_limit"]:
            print(f"popcount limit: the model's {limit['binary_macs'] / 1e6:.0f} M binary MACs take {limit['limit_ms']:.3f} ms "
                  f"at {limit['gmacs_per_s']:.0f} G/s, so no schedule can make the binary kernels more than "
                  f"x{limit['binary_speedup_at_limit']:.2f} faster than untuned")
    if args.plot:
        plot_report(result.report, args.plot)
        print(f"plot: {args.plot}")
    print(f"report: {result.report_path}; compile with: python -m bnn_tvm compile "
          f"{args.model or ''} --target {args.target} --db {args.db}".replace("  ", " "))
    return 0
