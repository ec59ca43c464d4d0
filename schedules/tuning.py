"""Binary-aware MetaSchedule design spaces for the XNOR-popcount kernels, and tuned records applied.

MetaSchedule's generic space does not find popcount-friendly schedules, so for each kernel kind
whose hand schedule is a rule with knobs (``schedules.cpu.RULES``: binary, ternary and k-bit
convs, sign-packs, denses, Bi-Attention's kernels) the space is that rule: one design per setting of its structural knobs
(``Rule.choices``; a trace that tensorizes must know its tile shape), the hand defaults first,
its sampled knobs drawn by MetaSchedule sampling instructions whose decisions default to the
setting's values:

* structural knobs: the output-width tile (``width_block``), the vector width (``lanes``:
  output channels per SIMD register), which loops form the parallel loop (rows; rows and column
  blocks; rows, column blocks and channel blocks; a dense's task loop parallel or serial),
  where the padded input is copied, and on units whose popcount is a byte-table lookup the
  counters (bytes per chunk, ``cpu.count_mismatches``, or 32-bit words; on NEON, halfwords or
  32-bit words);
* sampled knobs: the channel block (``sample_categorical`` among whole vectors that fit the
  registers; ``mutate_choice`` redraws it), a word-aligned threshold tile's words and the
  unrolled part of the reduction over kernel columns and channel words with 32-bit counters
  (``sample_perfect_tile``, mutated by ``MutateTileSize``), for a sign-pack the positions
  packed per vector, for a dense's or attention's tile the rows (``sample_perfect_tile``) and
  the output block (``sample_categorical``).

The first design at its own decisions is the hand schedule, so a tuned record and the hand
default are two settings of the same code (``tests/test_tune.py`` checks the IR is the same).
Weights and the padding correction are constants: every design relays them out the way the rule
does (output channels innermost), and :func:`apply_database` permutes the constants at the call
sites (``schedules.replace_kernels``), as ``schedule_module`` does.

Float kernels (``LegalizeOps`` output) are tuned in MetaSchedule's default space; kernel kinds
without a rule (``max_pool_or``, ``pack_heads``, ...) too.

:func:`apply_database` (``compile --db DIR``) replaces each PrimFunc whose workload has a record
by the best record's schedule, tagged ``tirx.is_scheduled``; a tuned binary kernel keeps its
kind as ``bnn.tuned_op`` instead of ``bnn.op``, so ``schedule_module`` leaves it alone.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

from . import OPAQUE_PATTERN, SCHEDULED_ATTR, bitserial, cpu, prepare_cpu_kernels, replace_kernels, vector_unit
from .tuning_files import FAILED_RUN_SECS, RECORD_FILE, UNTUNED_FILE, WORKLOAD_FILE  # noqa: F401 (the module's API)
from bnn_tvm.errors import BnnError
from bnn_tvm.atomic_files import atomic_write

LOG = logging.getLogger(__name__)

TUNED_OP_ATTR = "bnn.tuned_op"


# --------------------------------------------------------------------------------------------
# Tensor intrinsics a stored trace names: registered per tile shape on first use, which a new
# process has not seen yet. ``bnn_tuning_*``: the names records written before the spaces were
# the hand schedules' rules gave the same intrinsics.

INTRINSIC_NAMES = (
    (re.compile(r"bnn_(?:tuning_pack32|pack_bits32)_(\w+)$"),
     lambda m: cpu.register_intrinsic(m[0], lambda: cpu._pack_bits32_funcs(m[1]))),
    (re.compile(r"bnn_byte_step_(\d+)_(int\d+)(?:_(masked_data|masked_weight|both_ternary))?$"),
     lambda m: cpu.byte_step_intrin(int(m[1]), m[2], m[3] or "xor")),
    (re.compile(r"bnn_byte_finish_(\d+)_(int\d+)(?:_minus_from_(\d+))?$"),
     lambda m: cpu.byte_finish_intrin(int(m[1]), m[2], int(m[3] or 0))),
    (re.compile(r"bnn_word_step_(\d+)_(int\d+)_both_ternary$"),
     lambda m: cpu.multiply_add_step_intrin(int(m[1]), m[2])),
    (re.compile(r"bnn_halfword_step_(aarch64|armv7)_(\d+)_(int\d+)(?:_(masked_data|masked_weight|both_ternary))?$"),
     lambda m: cpu.halfword_step_intrin(int(m[2]), m[3], m[1], m[4] or "xor")),
    (re.compile(r"bnn_halfword_finish_(aarch64|armv7)_(\d+)_(int\d+)(?:_minus_from_(\d+))?$"),
     lambda m: cpu.halfword_finish_intrin(int(m[2]), m[3], m[1], int(m[4] or 0))),
    (re.compile(rf"bnn_(?:tuning_tile_out|tile_out_(int32|float32))_(\d+)x(\d+)(?:_div(\d+)|_mul([0-9a-f]{{8}}))?"
                rf"((?:_(?:{'|'.join(bitserial.EPILOGUE_OPS)})(?:at[cyx]+)?)*)_(int\d+)$"),
     lambda m: cpu.register_intrinsic(m[0], lambda: cpu._tile_out_funcs(
         int(m[2]), int(m[3]), tuple(cpu.step_of_token(t) for t in m[6].split("_")[1:]), m[7], m[1] or "int32",
         int(m[4] or 1),
         cpu.scale_of_suffix(m[5]) if m[5] else None))),
)


def register_intrinsics_named_in(lines) -> None:
    """Register the intrinsics that stored records name: ``JSONDatabase`` parses every trace when
    it opens, and a ``Tensorize`` of an intrinsic this process has not registered fails it."""
    names = set()
    for line in lines:
        names.update(re.findall(r"bnn_(?:tuning|byte|word|halfword|tile_out|pack_bits32)_[A-Za-z0-9_]+", line))
    for name in names:
        register_intrinsic_named(name)


def register_intrinsics(trace) -> None:
    """Register the tensor intrinsics a stored trace names."""
    for inst in trace.insts:
        if inst.kind.name == "Tensorize":
            register_intrinsic_named(str(inst.attrs[0]))


def register_intrinsic_named(name: str) -> None:
    """Register the tensor intrinsic ``name`` (one of ``INTRINSIC_NAMES``' patterns; others are not ours)."""
    for pattern, register in INTRINSIC_NAMES:
        match = pattern.match(name)
        if match:
            register(match)


# --------------------------------------------------------------------------------------------
# Design spaces: the kernel kind's rule (``cpu.RULES``) over its structural knobs


def rule_designs(sch: s_tir.Schedule, func, unit, rule: cpu.Rule) -> list[s_tir.Schedule]:
    """One design per structural knob setting of ``rule``, the hand defaults first; each draws
    its sampled knobs by MetaSchedule sampling instructions whose decisions are the setting's
    values (the first design, at its decisions, is the hand schedule)."""
    defaults = rule.defaults(sch, func, unit)
    designs = []
    for knobs in [defaults] + [k for k in rule.choices(sch, func, unit) if k != defaults]:
        design = sch.copy()
        rule.apply(design, func, unit, knobs, space=True)
        designs.append(design)
    return designs


def design_spaces(func, op: str, spec) -> list[s_tir.Schedule] | None:
    """The binary-aware design spaces of a kernel, or None when it has none here."""
    rule = cpu.RULES.get(op)
    unit = vector_unit(spec)
    if rule is None or unit is None or cpu.built_kernel(func, op, unit):
        return None
    return rule_designs(s_tir.Schedule(workload(func)), func, unit, rule)


def space_generator(func, op: str | None, spec):
    """A MetaSchedule space generator for a kernel: the binary-aware space where there is one,
    else MetaSchedule's default (post-order-apply with the target's rules)."""
    from tvm.s_tir import meta_schedule as ms

    unit = vector_unit(spec)
    rule = cpu.RULES.get(op or "")
    if rule is None or unit is None:
        return "post-order-apply"

    def generate(sch: s_tir.Schedule):
        return rule_designs(sch, func, unit, rule)

    return ms.space_generator.ScheduleFn(
        generate,
        sch_rules=[],
        postprocs=[ms.postproc.DisallowDynamicLoop()],
        mutator_probs={ms.mutator.MutateTileSize(): 0.5, mutate_choice(): 0.5},
    )


def mutate_choice():
    """A MetaSchedule mutator that redraws one ``sample_categorical`` decision (a rule's choice
    among candidates, ``cpu.choose``): MetaSchedule's own mutators change only tile sizes and
    unroll annotations."""
    from tvm.s_tir.meta_schedule.mutator import PyMutator
    from tvm.ir.utils import derived_object

    @derived_object
    class MutateChoice(PyMutator):
        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, trace, rand_state):
            choices = [inst for inst in trace.insts if inst.kind.name == "SampleCategorical"
                       and len(inst.attrs[0]) > 1 and inst in trace.decisions]
            if not choices:
                return None
            rng = random.Random(int(rand_state))
            inst = rng.choice(choices)
            current = int(trace.decisions[inst])
            decision = rng.choice([k for k in range(len(inst.attrs[0])) if k != current])
            return trace.with_decision(inst, decision, remove_postproc=True)

        def clone(self):
            return MutateChoice()

    return MutateChoice()


# --------------------------------------------------------------------------------------------
# Tasks and workloads


def workload(func) -> tvm.IRModule:
    """The IRModule MetaSchedule keys a kernel's records by (its own normalisation), as a deep
    copy: a ``Schedule`` on a module whose loops are referenced only once rewrites them in place,
    which would change ``func`` (and the module it belongs to) under its other users."""
    func = func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
    return tvm.ir.load_json(tvm.ir.save_json(tvm.IRModule({"main": func})))


def prepare_module(mod, spec):
    """The Relax module as its kernels will be compiled: what ``schedule_module`` does before it
    schedules (CPU: float convs as ``float_conv2d`` kernels, the
    hand-written max pools and matmuls of ``schedules.float_ops``) and
    what ``tvm.compile`` does first (Relax operators lowered to PrimFuncs), so that the tuner and
    ``compile --db`` see the same kernels as the build."""
    from tvm import relax

    if spec.family in ("x86", "arm"):
        mod = prepare_cpu_kernels(mod, spec)
    return relax.transform.LegalizeOps()(mod)


def tunable_kernels(mod):
    """``(global var, PrimFunc, bnn op or None)`` of every PrimFunc of a legalized module."""
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and SCHEDULED_ATTR not in (func.attrs or {}):
            op = str(func.attrs["bnn.op"]) if func.attrs is not None and "bnn.op" in func.attrs else None
            yield gvar, func, op


# --------------------------------------------------------------------------------------------
# The database: read tolerantly, applied to a module


def clean_lines(path: str, what: str) -> tuple[list[str], int]:
    """The parseable lines of a JSON-lines file and how many were dropped. Only a final line may
    be broken (a run killed while appending); one in the middle means the file is damaged."""
    if not os.path.exists(path):
        return [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    good = []
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
            good.append(line)
        except ValueError:
            if number != len(lines) and what == "workload":
                raise BnnError(f"{path}: line {number} is not JSON; the tuning database is damaged") from None
            warnings.warn(f"{path}: skipped {'a truncated last' if number == len(lines) else 'a broken'} line {number} "
                          "(a tuning run was killed while writing it)", stacklevel=3)
    return good, len(lines) - len(good)


def clean_database_files(db_dir: str) -> tuple[list[str], list[str], int]:
    """Workload and record lines of a database folder that can be loaded; records that refer to
    a workload line that did not survive are dropped too."""
    workloads, _ = clean_lines(os.path.join(db_dir, WORKLOAD_FILE), "workload")
    records, dropped = clean_lines(os.path.join(db_dir, RECORD_FILE), "record")
    kept = [line for line in records if valid_record(line, len(workloads))]
    return workloads, kept, dropped + len(records) - len(kept)


def valid_record(line: str, n_workloads: int) -> bool:
    entry = json.loads(line)
    return isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and 0 <= entry[0] < n_workloads


def repair_database(db_dir: str) -> int:
    """Rewrite (atomically) a database folder without its broken lines; returns how many went."""
    workloads, records, dropped = clean_database_files(db_dir)
    if dropped:
        for name, lines in ((WORKLOAD_FILE, workloads), (RECORD_FILE, records)):
            text = "".join(line + "\n" for line in lines)
            atomic_write(os.path.join(db_dir, name), lambda tmp, text=text: open(tmp, "w").write(text))
    return dropped


def open_database(db_dir: str, writable: bool):
    """A ``JSONDatabase`` on ``db_dir``. Writable (for tuning): broken lines are removed from the
    files first. Read-only (for compiling, perhaps beside a running tune): a cleaned copy is read."""
    from tvm.s_tir import meta_schedule as ms

    if writable:
        os.makedirs(db_dir, exist_ok=True)
        repair_database(db_dir)
        register_intrinsics_named_in(clean_lines(os.path.join(db_dir, RECORD_FILE), "record")[0])
        return ms.database.JSONDatabase(work_dir=db_dir, module_equality="structural")
    if not os.path.isfile(os.path.join(db_dir, WORKLOAD_FILE)):
        raise BnnError(f"--db {db_dir}: no tuning database there ({WORKLOAD_FILE} missing); run `python -m bnn_tvm tune --db {db_dir}` first")
    workloads, records, _ = clean_database_files(db_dir)
    register_intrinsics_named_in(records)
    copy = tempfile.mkdtemp(prefix="bnn_tvm_db_")
    try:
        for name, lines in ((WORKLOAD_FILE, workloads), (RECORD_FILE, records)):
            with open(os.path.join(copy, name), "w") as f:
                f.write("".join(line + "\n" for line in lines))
        return _load_copy(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _load_copy(folder: str):
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=folder, module_equality="structural")
    memory = ms.database.MemoryDatabase(module_equality="structural")
    for record in database.get_all_tuning_records():
        memory.commit_workload(record.workload.mod)
        memory.commit_tuning_record(record)
    return memory


def workload_key(func) -> str:
    """A task's identity across runs and processes: the structural hash of its workload."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(workload(func)) & (2**64 - 1):016x}"


def tuning_target(spec, cores: int | None = None):
    """The spec's target with ``num-cores``, which MetaSchedule's rules and mutators require: this
    machine's count for the host, 4 (a Raspberry Pi's Cortex-A53/A72) for a board."""
    cores = cores or ((os.cpu_count() or 1) if spec.is_host else 4)
    return tvm.target.Target({**spec.target, "num-cores": cores})


def target_label(target) -> str:
    """What records are matched by: the target without ``num-cores`` (a record tuned on a machine
    with another core count is still a schedule for this CPU)."""
    attrs = {k: v for k, v in dict(target.export()).items() if k != "num-cores"}
    return json.dumps(attrs, sort_keys=True, default=list)


def record_seconds(record) -> float:
    secs = [float(s) for s in (record.run_secs or [])]
    return sum(secs) / len(secs) if secs else float("inf")


def untuned_times(db_dir: str, target) -> dict:
    """``{workload key: seconds}`` of the untuned schedules ``tune`` measured (``UNTUNED_FILE``)."""
    path = os.path.join(db_dir, UNTUNED_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        known = json.load(f).get(target_label(target), {})
    return {key: entry["seconds"] for key, entry in known.items() if entry.get("seconds")}


def best_schedule(database, func, target, untuned_seconds: float | None = None):
    """``(schedule, seconds)`` of the best valid record of ``func`` for ``target``, or None when
    there is none or it is not faster than ``untuned_seconds``."""
    mod = workload(func)
    if not database.has_workload(mod):
        return None
    label = target_label(target)
    for record in database.get_top_k(database.commit_workload(mod), 1 << 20):  # best first
        seconds = record_seconds(record)
        if target_label(record.target) != label:
            continue
        if seconds >= FAILED_RUN_SECS or (untuned_seconds is not None and seconds >= untuned_seconds):
            return None
        register_intrinsics(record.trace)
        sch = s_tir.Schedule(mod)
        try:
            record.trace.apply_to_schedule(sch, remove_postproc=False)
        except (RuntimeError, ValueError, tvm.error.InternalError) as err:  # a record of an older space
            LOG.warning("a tuning record does not replay (%s); trying the next", str(err).splitlines()[0])
            continue
        return sch, seconds
    return None


@dataclass
class TunedKernel:
    """Duck-typed like ``schedules.cpu.Scheduled`` for ``schedules.replace_kernels``."""

    func: tirx.PrimFunc
    plan: str
    relayouts: dict


def tuned_kernel(original, scheduled, op: str | None, name: str) -> TunedKernel:
    """The scheduled function with the original's attributes, tagged as scheduled, and the
    permutations its changed parameter shapes ask of the constants passed in."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    attrs = {k: v for k, v in dict(original.attrs).items() if k != "bnn.op"}
    if op is not None:
        attrs[TUNED_OP_ATTR] = op
    attrs[SCHEDULED_ATTR] = True
    attrs["op_pattern"] = OPAQUE_PATTERN  # FuseOps must not fuse float neighbours into it
    func = scheduled.without_attr("global_symbol").without_attr("bnn.op").with_attrs(attrs)
    before = [tuple(int(d) for d in a.shape) for a in ArgInfo.from_prim_func(original)]
    after = [tuple(int(d) for d in a.shape) for a in ArgInfo.from_prim_func(func)]
    relayouts = space_relayouts(original, op)
    for position, (old, new) in enumerate(zip(before, after)):
        axes = relayouts.get(position, tuple(range(len(old))))
        if tuple(old[a] for a in axes) != new:
            raise ValueError(f"{name}: tuned parameter {position} has shape {new}, the kernel's is {old}; unknown relayout")
    return TunedKernel(func, "tuned (MetaSchedule record)", relayouts)


def space_relayouts(original, op: str | None) -> dict:
    """The permutations of constant parameters every design of ``op``'s rule makes (a conv's:
    ``cpu.relayout_conv_constants``); none for MetaSchedule's default space. Taken from the
    rule, not guessed from the tuned shapes: with equal extents (8 channels of an 8x8 output) a
    permuted correction has the shape it had."""
    rule = cpu.RULES.get(op or "")
    if rule is None or rule.relayout is None:
        return {}
    return rule.relayout(s_tir.Schedule(original), original)


def apply_database(mod, db_dir: str, spec, applied: dict | None = None):
    """Replace every PrimFunc of ``mod`` (a Relax module after the binarization passes) that has a
    record in the tuning database ``db_dir`` faster than its untuned schedule (as ``tune``
    measured it) by the best record's schedule.

    The module is prepared first (:func:`prepare_module`) so the kernels are the ones the tuner
    saw. ``applied``, if given, receives ``{kernel name: tuned seconds}``.
    """
    database = open_database(db_dir, writable=False)
    target = spec.tvm_target()
    untuned = untuned_times(db_dir, target)
    mod = prepare_module(mod, spec)
    tuned = {}
    for gvar, func, op in list(tunable_kernels(mod)):
        found = best_schedule(database, func, target, untuned.get(workload_key(func)))
        if found is None:
            continue
        sch, seconds = found
        tuned[gvar.name_hint] = tuned_kernel(func, sch.mod["main"], op, gvar.name_hint)
        if applied is not None:
            applied[gvar.name_hint] = seconds
    return replace_kernels(mod, tuned) if tuned else mod
