"""Build: Relax module -> compiled VM executable for a target, and its export.

Pipeline: LegalizeOps (ops to TIR), AnnotateTIROpPattern + FuseTIR (ember's Fused groups,
already Primitive functions, become single PrimFuncs; TVM's FuseOps does not run so ember's
grouping stands), dlight's CPU rules where they apply, then TVM's default lowering.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst

from ember.compiler.errors import EmberError
from ember.compiler.ir import Graph
from ember.targets import lowering
from ember.targets import tune as tuning
from ember.targets.fast_math import fast_math
from ember.targets.inplace import is_kernel_call, use_inplace
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
    block_lanes: int = 0  # the blocked activation layout's lanes (0: NCHW throughout)

    def export(self, path: Path) -> None:
        """Write the shared library (through a cross linker when the target is another CPU
        architecture; EmberError naming the package to install when there is none)."""
        from ember.targets.cross import fcompile

        link = fcompile(self.target)
        if link is None:
            self.executable.export_library(str(path))
            return
        try:
            self.executable.export_library(str(path), fcompile=link)
        except EmberError:
            raise
        except Exception as err:  # tvm.support.cc's RuntimeError("Compilation error: ...")
            lines = [line for line in str(err).splitlines() if line.strip()]
            raise EmberError(f"linking the {self.target.name} library failed: {' '.join(lines[:2])[:400]}") from None


def schedule_rules(target: TargetSpec) -> list[Any]:
    """The schedule rules tried, in order, on each kernel of a build for `target`.

    For the CPU: dlight's GEMV and reduction rules; kernels none of them takes keep TVM's
    default (unscheduled) code. ember's own rules go first here as they are written.
    """
    from tvm.s_tir import dlight as dl

    from ember.targets import sched_attention, sched_conv, sched_matmul, sched_nchwc, sched_reduce, sched_winograd

    return [*sched_winograd.RULES, *sched_nchwc.RULES, *sched_attention.RULES, *sched_matmul.RULES, *sched_conv.CONV_RULES, *sched_reduce.RULES,
            dl.cpu.GEMV(), dl.cpu.Reduction()]


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
            scheduled = schedule_with(rule, func, target)
            if scheduled is not None:
                mod[gvar] = scheduled
                applied[gvar.name_hint] = type(rule).__name__
                break
    return mod, applied


def schedule_with(rule: Any, func: Any, target: tvm.target.Target, knobs: dict[str, int] | None = None) -> Any:
    """The kernel scheduled by one rule (with the tuner's knob values, if any), or None when
    the rule declines it or fails on it."""
    from ember.targets.sched_common import KNOBS_ATTR, with_knobs

    func = with_knobs(_mark_small(func), knobs or {})
    try:
        space = rule.apply(func, target, False)
    except Exception as err:  # a rule's own failure: the caller tries the next one
        log.debug("schedule rule %s failed on %s: %s", type(rule).__name__, func.attrs.get("global_symbol"), err)
        return None
    if space is None:
        return None
    sch = space[0] if isinstance(space, list) else space
    scheduled = sch.mod["main"]
    if scheduled.attrs is not None and KNOBS_ATTR in scheduled.attrs:
        scheduled = scheduled.without_attr(KNOBS_ATTR)
    return scheduled.with_attr("tirx.is_scheduled", True)


# A kernel whose work is this small runs on the calling thread: a parallel launch costs
# microseconds, and on a busy machine a descheduled worker stalls the whole kernel. Below
# COMPUTE_SERIAL_FLOPS when it also touches under SERIAL_BYTES: a compute-bound few
# microseconds (the batch-3 digits CNN: 0.042 -> 0.034 ms; MobileNetV2, from its small 7x7 and
# 14x14 kernels: 4.04 -> 3.73 ms). A plain 4 MFLOP threshold also made the depthwise convs
# serial, which stream far more bytes for their FLOPs (MobileNetV2 4.26 -> 4.40). Kernels under
# 1 MFLOP were once serial whatever their bytes: a LayerNorm over ViT-S's [1, 197, 384] counts
# 0.6 MFLOP but reads and writes 600 KB, 21 us a call on one thread against 14 us on two (its 25
# calls: 0.59 -> 0.36 ms; MiniLM's 13: 0.18 -> 0.15 ms; MobileNetV2 and ResNet-18 within 2%
# either way, tools/ab.py at 2 threads).
# (Serial kernels were once blamed for the deploy bundle's segfaults; the cause was the bundle
# loader handing TVM numpy memory that was not 64-byte aligned, which any kernel whose aligned
# vector loads read an input straight away can trip: runtime/bundle_run.py now aligns inputs.)
COMPUTE_SERIAL_FLOPS = 4 << 20
SERIAL_BYTES = 256 << 10


def _mark_small(func: Any) -> Any:
    """The kernel marked `ember.serial` when its work is too small to split across threads."""
    from ember.targets.sched_common import SERIAL_ATTR, buffer_shape, dtype_bytes

    shapes = [buffer_shape(p) for p in func.params]
    if any(not isinstance(d, int) for shape in shapes for d in shape):
        return func  # symbolic: sized at run time, may be large
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        work = float(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:
        return func
    size = sum(int(np.prod(shape)) * dtype_bytes(str(p.ty.dtype)) for shape, p in zip(shapes, func.params) if shape)
    small = 0 < work < COMPUTE_SERIAL_FLOPS and size < SERIAL_BYTES
    return func.with_attr(SERIAL_ATTR, True) if small else func


def prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Relax -> one unscheduled PrimFunc per kernel: LegalizeOps, then FuseTIR over ember's
    Primitive groups, constants folded, and each kernel's constant (weight) parameters marked
    `layout_free_buffers` so a schedule may re-lay them out at compile time."""
    from ember.targets import blocked

    seq = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(blocked.LEGALIZE),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            relax.transform.FoldConstant(),
        ]
    )
    with target:
        return mark_layout_free(seq(fast_math(mod)))


def mark_layout_free(mod: tvm.IRModule) -> tvm.IRModule:
    """Each kernel's `layout_free_buffers`: the parameters that are constants at every call site.

    (TVM's AttachAttrLayoutFreeBuffers does the same but renames every kernel it touches.)
    """
    call_tir = tvm.ir.Op.get("relax.call_tir")
    free: dict[str, set[int]] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            consts = {i for i, arg in enumerate(expr.args[1].fields) if isinstance(arg, GenericConst)}
            free[name] = free[name] & consts if name in free else consts

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc) and free.get(gvar.name_hint):
            mod[gvar] = func.with_attr("layout_free_buffers", sorted(free[gvar.name_hint]))
    return mod


def schedule(mod: tvm.IRModule, target: tvm.target.Target, rules: list[Any]) -> tuple[tvm.IRModule, dict[str, str]]:
    """Every kernel scheduled by the first rule that takes it; {kernel: rule name}."""
    with target:
        return apply_schedules(mod, target, rules)


PREPROC = "meta_schedule.layout_rewrite_preproc"


def _packs_weights(func: Any) -> bool:
    """Whether a scheduled kernel holds a weight re-layout block (a schedule's packing).

    (TVM 0.27 has no Python visitor for s_tir blocks; the annotation is looked up in the text.)
    """
    return PREPROC in func.script()


def finalize(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """After scheduling: weight re-layouts a schedule asked for (blocks marked
    `meta_schedule.layout_rewrite_preproc`) split into their own kernels and folded into
    the constants, so packing is paid at compile time, not per inference.

    TVM's SplitLayoutRewritePreproc rejects some kernels that pack nothing (a lone copy), so
    it sees only `main` and the kernels that pack; the others are put back afterwards.
    """
    packing = {gv for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and _packs_weights(f)}
    if not packing:
        return mod
    others = {gv: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and gv not in packing}
    sub = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv not in others}, attrs=mod.attrs)
    with target:
        sub = relax.transform.SplitLayoutRewritePreproc()(sub)
    for gv, f in others.items():
        sub[gv] = f
    with target:
        return tvm.transform.Sequential([relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()])(sub)


def optimize(mod: tvm.IRModule, target: tvm.target.Target, rules: list[Any] | None = None) -> tuple[tvm.IRModule, dict[str, str]]:
    """prepare, schedule, finalize: the module tvm.compile receives and {kernel: rule}."""
    mod = prepare(mod, target)
    mod, applied = schedule(mod, target, rules or [])
    return finalize(mod, target), applied


def kernel_launches(mod: tvm.IRModule) -> int:
    """Number of call_tir (and call_tir_inplace) sites in `main` (one per kernel launch of an
    inference)."""
    found = [0]

    def visit(expr: Any) -> None:
        if is_kernel_call(expr):
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


def block_lanes(target: TargetSpec) -> int:
    """The float32 vector lanes the blocked activation layout uses on `target` (0: the target
    keeps NCHW; targets/blocked.py). x86 CPUs for now: the NEON rules are not measured yet."""
    if target.kind != "cpu":
        return 0
    from ember.targets.sched_common import vector_lanes

    lanes = vector_lanes(tvm.target.Target(target.tvm_target()), "float32")
    return lanes if lanes >= 8 else 0


def finish(mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tuple[tvm.IRModule, dict[str, str]]:
    """A scheduled module as tvm.compile takes it: weight re-layouts folded into constants,
    kernels made in place where they may be ({in-place kernel: the kernel it was made from})."""
    mod = finalize(mod, tvm_target)
    mod, made = use_inplace(mod)
    if made:
        with tvm_target:
            mod = relax.transform.DeadCodeElimination()(mod)
    return mod, made


def build(graph: Graph, target: TargetSpec, tune: tuning.TuneOptions | None = None, blocked: bool = True,
          winograd: bool = True, sample_dims: Mapping[str, int] | None = None) -> Built:
    """Lower, optimize and compile a graph for a target.

    `tune`: search schedules within a budget (targets/tune.py); with None, records of the
    default tuning database that beat the rules are still applied. `blocked`: keep CNN
    activations in the blocked layout where the target has one (targets/blocked.py).
    `winograd`: blocked 3x3 convs that qualify take the Winograd form (targets/winograd.py);
    `sample_dims`: the compile sample's values of the symbolic dims, which decide it for convs
    over a symbolic image size."""
    stats: dict[str, float] = {}
    start = time.perf_counter()
    lanes = block_lanes(target) if blocked else 0
    try:
        mod = to_relax(graph, lanes, winograd=winograd, sample_dims=sample_dims)
    except EmberError:
        raise
    except Exception as err:  # Relax refusing what an emitter built: one message, not TVM's traceback
        raise EmberError(f"cannot lower the model to TVM for {target.name}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0][:400] if str(err) else ''}") from None
    stats["lower_s"] = time.perf_counter() - start
    tvm_target = tvm.target.Target(target.tvm_target())
    start = time.perf_counter()
    try:
        mod = prepare(mod, tvm_target)
        unscheduled = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)  # schedule() rewrites mod
        mod, applied = schedule(mod, tvm_target, schedule_rules(target))
        mod, applied = tuning.tune(unscheduled, mod, applied, tvm_target, tune or tuning.TuneOptions())
        mod, made = finish(mod, tvm_target)
        for new, old in made.items():  # the rule that scheduled the kernel it was made from
            base = old.removesuffix("_prepacked")
            if base in applied or old in applied:
                applied[new] = applied.get(old, applied.get(base, ""))
        stats["inplace_kernels"] = len(made)
        stats["run_time_loops"] = sum(1 for _, f in mod.functions_items()
                                      if isinstance(f, relax.Function) and f.attrs is not None and "ember.loop" in f.attrs)
        kernels = kernel_names(mod)
        launches = kernel_launches(mod)
        executable = tvm.compile(mod, target=tvm_target, tir_pipeline=lowering.PIPELINE)
    except EmberError:
        raise
    except Exception as err:
        raise EmberError(f"TVM failed to build for {target.name}: {type(err).__name__}: {str(err).splitlines()[0][:400]}") from None
    stats["build_s"] = time.perf_counter() - start
    return Built(executable, target, kernels, launches, stats, module=mod, rules=applied, block_lanes=lanes)
