"""Cycle estimates of the binary kernels' inner loops from LLVM's scheduling models (llvm-mca).

An instruction count says nothing about an in-order core's pipeline: the Cortex-A53 issues at
most two instructions a cycle, one of them NEON, and stalls on a result that is not ready. So
for each kernel of a module compiled for an ARM target, ``kernel_estimates`` takes LLVM's own
assembly of the module, finds the kernel's innermost popcount loop, runs ``llvm-mca`` on that
loop's body with the target's CPU model (``-mcpu=cortex-a53`` for ``rasp3b``) and reports:

* ``cycles``: estimated cycles per iteration (llvm-mca's "Total Cycles" over its iterations:
  the steady state, stalls of the in-order pipeline included);
* ``block_rthroughput``: llvm-mca's "Block RThroughput", the bound from execution resources
  alone (no dependencies);
* ``binary_macs``: bit-MACs per iteration, the bits popcounted (``cnt vN.16b`` 128,
  ``cnt vN.8b`` 64, or 32 when its source was a 32-bit ``fmov sN``), channel padding included;
* ``cycles_per_binary_mac``: the two divided.

These are a model's estimates, not measurements: llvm-mca assumes every load hits L1, ignores
the loop's branch and knows the core only as well as LLVM's scheduling model does. They compare
schedules on one core; they do not time a layer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from bnn_tvm.errors import BnnError

ITERATIONS = 100  # enough for llvm-mca's first-iteration latency to fade from the average
LLVM_MCA_NAMES = ("llvm-mca",) + tuple(f"llvm-mca-{v}" for v in range(20, 13, -1))
INSTALL_HINT = "apt-get install llvm (Debian's LLVM tools package provides /usr/bin/llvm-mca)"
NOTE = "estimates by llvm-mca from LLVM's {cpu} scheduling model (L1 hits assumed), not measurements"

_BRANCH = re.compile(r"^\s*(?:b(?:\.\w+)?|cbn?z|tbn?z)\s+(?:.*,\s*)?(\.?L\w+)\s*$")
_LABEL = re.compile(r"^(\.?L[\w.]+|[A-Za-z_][\w.]*):\s*(?://.*)?$")
_FUNCTION = re.compile(r"^\s*\.type\s+([\w.$]+),\s*@function\s*$", re.M)


@dataclass(frozen=True)
class McaSummary:
    """llvm-mca's summary view of one code block."""

    iterations: int
    instructions: int
    total_cycles: int
    block_rthroughput: float

    @property
    def cycles_per_iteration(self) -> float:
        return self.total_cycles / self.iterations


@dataclass(frozen=True)
class LoopEstimate:
    function: str  # the symbol whose code holds the loop
    label: str  # the loop's label in LLVM's assembly
    instructions: int  # per iteration
    binary_macs: int  # bits popcounted per iteration
    cycles: float  # estimated cycles per iteration
    block_rthroughput: float

    @property
    def cycles_per_binary_mac(self) -> float | None:
        return self.cycles / self.binary_macs if self.binary_macs else None

    def to_json(self) -> dict:
        return {"function": self.function, "loop": self.label, "instructions_per_iteration": self.instructions,
                "binary_macs_per_iteration": self.binary_macs, "mca_cycles_per_iteration": self.cycles,
                "mca_block_rthroughput": self.block_rthroughput, "mca_cycles_per_binary_mac": self.cycles_per_binary_mac}


# ------------------------------------------------------------------------------------------
# llvm-mca


def llvm_mca() -> str:
    for name in LLVM_MCA_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise BnnError(f"llvm-mca not found on PATH (needed for the cycle estimates): {INSTALL_HINT}")


def llvm_mca_version() -> str:
    text = subprocess.run([llvm_mca(), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"LLVM version (\S+)", text)
    return f"llvm-mca {match.group(1) if match else '(unknown version)'}"


def parse_summary(text: str) -> McaSummary:
    """The numbers of llvm-mca's summary view (its default text output)."""
    fields = {}
    for key in ("Iterations", "Instructions", "Total Cycles", "Block RThroughput"):
        match = re.search(rf"^{key}:\s*([\d.]+)\s*$", text, re.M)
        if match is None:
            raise BnnError(f"llvm-mca output has no '{key}:' line (an llvm-mca version this parser does not know?)")
        fields[key] = match.group(1)
    return McaSummary(int(fields["Iterations"]), int(fields["Instructions"]), int(fields["Total Cycles"]),
                      float(fields["Block RThroughput"]))


def run_mca(body: str, mcpu: str, mtriple: str = "aarch64-linux-gnu", mattr: str = "",
            iterations: int = ITERATIONS) -> McaSummary:
    """llvm-mca on ``body`` (instructions only, as ``instructions`` returns them)."""
    command = [llvm_mca(), f"-mtriple={mtriple}", f"-mcpu={mcpu}", f"-iterations={iterations}"]
    if mattr:
        command.append(f"-mattr={mattr}")
    done = subprocess.run(command, input=body, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:300])
        raise BnnError(f"llvm-mca -mtriple={mtriple} -mcpu={mcpu}: {first.strip()}")
    return parse_summary(done.stdout)


# ------------------------------------------------------------------------------------------
# LLVM's assembly: functions, loops, popcounts


def instructions(block: str) -> list[str]:
    """The instruction lines of ``block``: no labels, directives or comments (llvm-mca would
    reject ``.loc`` lines without the ``.file`` they refer to)."""
    lines = []
    for line in block.splitlines():
        text = line.split("//", 1)[0].strip()
        if text and not text.startswith((".", "#", ";")) and not _LABEL.match(text):
            lines.append(text)
    return lines


def functions(asm: str) -> dict[str, str]:
    """``{symbol: code}`` of every function in ``asm``, each from its ``.type`` line to the next."""
    starts = [(m.start(), m.group(1)) for m in _FUNCTION.finditer(asm)]
    ends = [m.start() for m in re.finditer(r"^\s*\.type\s", asm, re.M)] + [len(asm)]
    found = {}
    for start, name in starts:
        end = next(e for e in ends if e > start)
        found[name] = asm[start:end]
    return found


def kernel_code(asm: str) -> dict[str, str]:
    """``{kernel: code}``: TVM emits a kernel as ``NAME_compute_`` (and an FFI wrapper
    ``__tvm_ffi_NAME``), with each parallel loop body a local ``.L__tvm_parallel_lambda*``
    function that the kernel passes to the thread pool by address; that body belongs to the
    kernel that names it."""
    funcs = functions(asm)
    kernels: dict[str, list[str]] = {}
    for name, code in funcs.items():
        kernel = re.fullmatch(r"__tvm_ffi_(\w+)|(\w+)_compute_", name)
        if kernel:
            kernels.setdefault(kernel.group(1) or kernel.group(2), []).append(code)
    for name, code in funcs.items():
        if not name.startswith(".L"):
            continue
        named = re.compile(rf"{re.escape(name)}(?![\w.])")  # .L__tvm_parallel_lambda is not ...lambda.7
        owner = next((k for k, parts in kernels.items() if any(named.search(p) for p in parts)), None)
        if owner is not None:
            kernels[owner].append(code)
    return {kernel: "\n".join(parts) for kernel, parts in kernels.items()}


def innermost_loops(code: str) -> list[tuple[str, str]]:
    """``(label, body)`` of each innermost loop: from a label to the last backward branch to it,
    with no other loop's label in between. A loop with forward branches inside is estimated as
    if all of its instructions ran on every iteration (llvm-mca reads straight-line code)."""
    lines = code.splitlines()
    labels = {}
    for i, line in enumerate(lines):
        match = _LABEL.match(line.strip())
        if match and match.group(1).startswith(".L"):
            labels[match.group(1)] = i
    spans = {}
    for i, line in enumerate(lines):
        match = _BRANCH.match(line.split("//", 1)[0])
        if match and labels.get(match.group(1), i) < i:
            spans[match.group(1)] = (labels[match.group(1)], i)
    innermost = [
        (label, start, end) for label, (start, end) in spans.items()
        if not any(start < s <= end and (s, e) != (start, end) for s, e in spans.values())
    ]
    return [(label, "\n".join(lines[start : end + 1])) for label, start, end in innermost]


def popcount_bits(body: list[str]) -> int:
    """Bits popcounted by one pass over ``body``: each ``cnt`` counts its vector's width, except
    a 64-bit ``cnt`` whose source register last came from a 32-bit ``fmov sN, wM`` (a scalar
    popcount of one word: the upper half is zero)."""
    total = 0
    for i, line in enumerate(body):
        match = re.match(r"cnt\s+v\d+\.(16|8)b,\s*v(\d+)\.", line)
        if match is None:
            continue
        if match.group(1) == "16":
            total += 128
            continue
        source = match.group(2)
        # the last write to the source register, looking back around the loop
        earlier = body[:i][::-1] + body[i + 1 :][::-1]
        writer = next((w for w in earlier if re.match(rf"\w+(?:\.\w+)?\s+[vqdsbh]{source}\b", w)), "")
        total += 32 if re.match(rf"fmov\s+s{source}\b", writer) else 64
    return total


def loop_estimates(asm: str, mcpu: str, mtriple: str = "aarch64-linux-gnu", mattr: str = "") -> list[LoopEstimate]:
    """An estimate of every innermost loop in ``asm`` that popcounts, in the order they appear."""
    found = []
    for name, code in functions(asm).items():
        for label, block in innermost_loops(code):
            body = instructions(block)
            bits = popcount_bits(body)
            if bits:
                summary = run_mca("\n".join(body) + "\n", mcpu, mtriple, mattr)
                found.append(LoopEstimate(name, label, len(body), bits, summary.cycles_per_iteration,
                                          summary.block_rthroughput))
    return found


def estimate(asm: str, mcpu: str, mtriple: str = "aarch64-linux-gnu", mattr: str = "") -> dict[str, LoopEstimate]:
    """``{kernel: its inner loop's estimate}`` for every kernel of ``asm`` with a popcount loop.
    The inner loop is the innermost loop that popcounts the most bits per iteration (the main
    loop; a kernel's remainder loops count fewer)."""
    result = {}
    for kernel, code in kernel_code(asm).items():
        loops = loop_estimates(code, mcpu, mtriple, mattr)
        if loops:
            result[kernel] = max(loops, key=lambda e: (e.binary_macs, e.instructions))
    return result


# ------------------------------------------------------------------------------------------
# Compiled modules


def module_asm(executable) -> str:
    """LLVM's assembly of the kernels of a compiled Relax executable (``tvm.compile``)."""
    for module in [executable.mod, *executable.mod.imports]:
        if getattr(module, "kind", "") == "llvm":
            return module.inspect_source("asm")
    raise BnnError("the compiled module holds no LLVM code to estimate")


def target_cpu(spec) -> tuple[str, str, str]:
    """``(mtriple, mcpu, mattr)`` of an ARM target spec, as llvm-mca takes them."""
    if spec.family != "arm" or spec.isa != "aarch64":
        # the loop parser reads AArch64 popcounts; LLVM 14 has no 32-bit Cortex-A53 model anyway
        raise BnnError(f"--target {spec.name}: llvm-mca estimates are made for 64-bit ARM (aarch64) targets only")
    target = spec.target
    mattr = target.get("mattr", [])
    return target.get("mtriple", "aarch64-linux-gnu"), target.get("mcpu", "generic"), ",".join(mattr)


def kernel_estimates(executable, spec) -> dict:
    """The JSON-ready estimates of a module compiled for the ARM target ``spec``: ``note``,
    ``tool``, ``mcpu`` and, per kernel with a popcount loop, its ``LoopEstimate.to_json``."""
    mtriple, mcpu, mattr = target_cpu(spec)
    found = estimate(module_asm(executable), mcpu, mtriple, mattr)
    return {"note": NOTE.format(cpu=mcpu), "tool": llvm_mca_version(), "mtriple": mtriple, "mcpu": mcpu,
            "kernels": {kernel: loop.to_json() for kernel, loop in found.items()}}


def report_lines(estimates: dict, indent: str = "  ") -> list[str]:
    """Human-readable lines of ``kernel_estimates``' result, one per kernel."""
    lines = [f"{indent}llvm-mca ESTIMATES, not measurements ({estimates['tool']}, -mcpu={estimates['mcpu']}, "
             f"L1 hits assumed), per kernel's inner popcount loop:"]
    if not estimates["kernels"]:
        lines.append(f"{indent}  (no kernel has a popcount loop)")
    for kernel, e in estimates["kernels"].items():
        lines.append(f"{indent}  {kernel}: loop {e['loop']} ({e['instructions_per_iteration']} instructions, "
                     f"{e['binary_macs_per_iteration']} binary MACs per iteration): estimated {e['mca_cycles_per_iteration']:.2f} "
                     f"cycles per iteration (block throughput bound {e['mca_block_rthroughput']:.1f}), "
                     f"estimated {e['mca_cycles_per_binary_mac']:.4f} cycles per binary MAC")
    return lines
