"""Build: Relax module -> compiled VM executable for a target, and its export.

Pipeline: LegalizeOps (ops to TIR), AnnotateTIROpPattern + FuseTIR (ember's Fused groups,
already Primitive functions, become single PrimFuncs; TVM's FuseOps does not run so ember's
grouping stands), dlight's CPU rules where they apply, then TVM's default lowering.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from ember.compiler.errors import EmberError
from ember.compiler.ir import Graph
from ember.targets.lower import to_relax
from ember.targets.registry import TargetSpec

log = logging.getLogger(__name__)


@dataclass
class Built:
    """A compiled graph: the executable, its kernels and how long each step took.

    `kernels` are the distinct PrimFuncs (TVM merges structurally equal ones);
    `launches` is how many kernel calls one inference makes.
    """

    executable: Any
    target: TargetSpec
    kernels: tuple[str, ...]
    launches: int = 0
    stats: dict[str, float] = field(default_factory=dict)
    module: Any = None  # the optimized, scheduled IRModule tvm.compile received (for reports)
    rules: dict[str, str] = field(default_factory=dict)  # kernel -> name of the rule that scheduled it

    def export(self, path: Path) -> None:
        """Write the shared library."""
        self.executable.export_library(str(path))


def schedule_rules(target: TargetSpec) -> list[Any]:
    """The schedule rules tried, in order, on each kernel of a build for `target`.

    For the CPU: dlight's GEMV and reduction rules; kernels none of them takes keep TVM's
    default (unscheduled) code. ember's own rules go first here as they are written.
    """
    from tvm.s_tir import dlight as dl

    return [dl.cpu.GEMV(), dl.cpu.Reduction()]


def apply_schedules(mod: tvm.IRModule, target: tvm.target.Target, rules: list[Any]) -> tuple[tvm.IRModule, dict[str, str]]:
    """Each PrimFunc scheduled by the first rule that takes it; {kernel: rule name}.

    A rule that raises on a kernel is skipped for that kernel (dlight's CPU GEMV rule fails on
    some loop nests it claims), so a rule's bug costs speed, never the build.
    """
    applied: dict[str, str] = {}
    for gvar, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or int(func.attrs.get("tirx.is_scheduled", 0) or 0) == 1:
            continue
        for rule in rules:
            try:
                space = rule.apply(func, target, False)
            except Exception as err:  # a rule's own failure: try the next one
                log.debug("schedule rule %s failed on %s: %s", type(rule).__name__, gvar.name_hint, err)
                continue
            if space is None:
                continue
            sch = space[0] if isinstance(space, list) else space
            mod[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            applied[gvar.name_hint] = type(rule).__name__
            break
    return mod, applied


def optimize(mod: tvm.IRModule, target: tvm.target.Target, rules: list[Any] | None = None) -> tuple[tvm.IRModule, dict[str, str]]:
    """ember's Relax pipeline up to (not including) TVM's low-level lowering; the module and
    {kernel: rule that scheduled it}."""
    seq = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            relax.transform.FoldConstant(),
        ]
    )
    applied: dict[str, str] = {}
    with target:
        mod = seq(mod)
        if rules:
            mod, applied = apply_schedules(mod, target, rules)
    return mod, applied


def kernel_launches(mod: tvm.IRModule) -> int:
    """Number of call_tir sites in `main` (one per kernel launch of an inference)."""
    found = [0]
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            found[0] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return found[0]


def kernel_names(mod: tvm.IRModule) -> tuple[str, ...]:
    """Names of the PrimFuncs (kernels) in a module."""
    return tuple(sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)))


def kernel_count(built: Built) -> int:
    """Distinct kernels (PrimFuncs) in a built module: one per Fused group plus one per other computing op.

    Structurally identical kernels are one PrimFunc (TVM deduplicates them); `built.launches`
    counts calls instead.
    """
    return len(built.kernels)


def build(graph: Graph, target: TargetSpec) -> Built:
    """Lower, optimize and compile a graph for a target."""
    stats: dict[str, float] = {}
    start = time.perf_counter()
    mod = to_relax(graph)
    stats["lower_s"] = time.perf_counter() - start
    tvm_target = tvm.target.Target(target.tvm_target())
    start = time.perf_counter()
    try:
        mod, applied = optimize(mod, tvm_target, schedule_rules(target))
        kernels = kernel_names(mod)
        launches = kernel_launches(mod)
        executable = tvm.compile(mod, target=tvm_target)
    except EmberError:
        raise
    except Exception as err:
        raise EmberError(f"TVM failed to build for {target.name}: {type(err).__name__}: {str(err).splitlines()[0][:400]}") from None
    stats["build_s"] = time.perf_counter() - start
    return Built(executable, target, kernels, launches, stats, module=mod, rules=applied)
