"""Per-kernel counts for an artifact's manifest: FLOPs, bytes, calls and the rule that scheduled it.

    kernel_stats(graph, built) -> [KernelStats(name, flops, bytes, rule, calls), ...]

Counts come from each kernel's TIR *before* scheduling (the graph lowered again through the
build's `prepare` stage): the scheduled TIR may compute padded tiles (a 7x33 matmul scheduled
in 16-lane tiles counts 1.65x its FLOPs there), and the report wants the useful work.

- flops: TVM's `estimate_tir_flops` over the unscheduled PrimFunc: every arithmetic op a
  block executes times its loop extents; a multiply-add is 2, an epilogue add or max 1
  (a 3x3 conv to 16 channels on 8x8 with bias and ReLU: 2*16*64*9 + 1024 + 1024).
- bytes: the kernel's compulsory traffic, every parameter buffer once (inputs read once,
  outputs written once).
- Symbolic dims take the values of the compile's sample (`dims`, recorded in the manifest as
  `kernel_dims`), bound in the Relax module before lowering; any left count as 1.
- rule: the schedule rule's class name, `none` for kernels no rule took (TVM's default code).
- calls: call sites of the kernel in `main` (launches per inference).

A kernel whose schedule packed a weight is renamed `<name>_prepacked` by the build's finalize
stage, and one that writes its result over an operand `<name>_inplace` (targets/inplace.py);
both are matched back to their unscheduled original by those suffixes.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import tvm
from tvm import relax
from tvm.s_tir.analysis import estimate_tir_flops

from ember.compiler.ir import Graph
from ember.targets.build import Built, prepare
from ember.targets.inplace import SUFFIX as INPLACE_SUFFIX
from ember.targets.inplace import is_kernel_call
from ember.targets.lower import to_relax

PACKED_SUFFIX = "_prepacked"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelStats:
    """One kernel's counts (per call, except `calls`)."""

    name: str
    flops: float
    bytes: int
    rule: str
    calls: int

    def as_json(self) -> dict[str, Any]:
        """The manifest's form."""
        return asdict(self)


def primfuncs(mod: tvm.IRModule) -> dict[str, Any]:
    """The module's PrimFuncs by name."""
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def call_counts(mod: tvm.IRModule) -> Counter[str]:
    """How many call_tir (and call_tir_inplace) sites call each kernel: in `main`, and in the
    functions of If branches and run-time loops (a loop's kernels count once a call site,
    however many iterations run)."""
    counts: Counter[str] = Counter()

    def visit(expr: Any) -> None:
        if is_kernel_call(expr):
            counts[expr.args[0].name_hint] += 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def _dim(d: Any) -> int:
    return int(d) if isinstance(d, int | tvm.tirx.IntImm) else 1  # symbolic dims count as 1


def param_bytes(func: Any) -> int:
    """Bytes of the kernel's parameter buffers (scalars count their own size)."""
    total = 0
    for param in func.params:
        try:
            dtype = tvm.runtime.DataType(str(param.dtype))
        except AttributeError:  # a scalar (a symbolic dim passed to the kernel): its type's size
            dtype = tvm.runtime.DataType(str(param.ty.dtype))
        bits = dtype.bits * dtype.lanes
        elements = 1
        for d in getattr(param, "shape", None) or ():
            elements *= _dim(d)
        total += elements * max(bits // 8, 1)
    return total


def flops(func: Any) -> float:
    """FLOPs of one call of an unscheduled PrimFunc."""
    return float(estimate_tir_flops(tvm.IRModule({"main": func})))


def _original(name: str, unscheduled: dict[str, Any]) -> str | None:
    name = re.sub(INPLACE_SUFFIX + r"\d*$", "", name)  # an in-place twin counts as its kernel
    if name in unscheduled:
        return name
    if name.endswith(PACKED_SUFFIX) and name[: -len(PACKED_SUFFIX)] in unscheduled:
        return name[: -len(PACKED_SUFFIX)]
    return None


def _unscheduled(mod: Any, target: Any, dims: Mapping[str, int] | None) -> dict[str, Any]:
    """The module's unscheduled kernels, with the symbolic dims at `dims`' values."""
    if not dims:
        return primfuncs(prepare(mod, target))
    try:
        return primfuncs(prepare(relax.transform.BindSymbolicVars(dict(dims))(mod), target))
    except Exception as err:
        # a kernel call_te made while lowering (a Winograd conv's) keeps the symbolic shapes
        # it was made with, which FuseTIR cannot join to its epilogue's bound ones: each
        # kernel's own symbolic params bound instead; a dim named otherwise counts as 1
        log.debug("kernel counts with each kernel's dims bound: %s", err)
        return {name: _bound(func, dims) for name, func in primfuncs(prepare(mod, target)).items()}


def _bound(func: Any, dims: Mapping[str, int]) -> Any:
    """A PrimFunc with its symbolic dims (scalar params and the vars of its buffers' shapes
    named as dims) set to their values: a copy for counting, not for building. (Binding the
    scalar params alone left the shapes of every kernel that takes no such param at 1: a model
    with one call_te kernel over a symbolic size reported all its kernels' FLOPs so.)"""
    import tvm_ffi

    def value(var: Any) -> Any:
        if var.name in dims and str(var.ty.dtype).startswith("int"):
            return tvm.tirx.IntImm(str(var.ty.dtype), int(dims[var.name]))
        return var

    try:
        return tvm_ffi.structural_map(func, [(tvm.ir.expr.Var, value)])
    except Exception:  # (the scalar params only)
        values = {p: tvm.tirx.IntImm(str(p.ty.dtype), int(dims[p.name])) for p in func.params
                  if p.name in dims and isinstance(p.ty, tvm.ir.PrimType)}
        return func.specialize(values) if values else func


def kernel_stats(graph: Graph, built: Built, dims: Mapping[str, int] | None = None) -> list[KernelStats]:
    """Counts for every kernel `main` calls in the built module, in name order; symbolic dims
    take their values from `dims` (the sample's), and count as 1 where it has none."""
    target = tvm.target.Target(built.target.tvm_target())
    unscheduled = _unscheduled(to_relax(graph, built.block_lanes), target, dims)
    final = primfuncs(built.module)
    stats = []
    for name, calls in sorted(call_counts(built.module).items()):
        original = _original(name, unscheduled)
        # a kernel the finalize stage made that has no unscheduled twin: count its own TIR
        func = unscheduled[original] if original is not None else final[name]
        rule = built.rules.get(original or name) or built.rules.get(name) or "none"
        stats.append(KernelStats(name, flops(func), param_bytes(func), rule, calls))
    return stats
