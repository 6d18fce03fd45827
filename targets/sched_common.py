"""What every CPU schedule rule needs: the target's vector width and cores, the kernel's blocks
sorted into anchor / prologue / epilogue, weight packing that is paid at compile time, and
epilogue fusion into the anchor's output tile.

A rule follows dlight's protocol: `apply(func, target, tunable) -> Schedule | None`, None when
the kernel is not its kind. `build.apply_schedules` tries the rules in order; the first that
returns a schedule wins, and a rule that raises is skipped for that kernel (a rule's bug costs
speed, never the build).

Weight packing: a kernel's parameters that are constants at every call site are marked
`layout_free_buffers` (build.mark_layout_free). `pack_weight` copies such a parameter into a
buffer of the layout the micro-kernel wants, in a block marked
`meta_schedule.layout_rewrite_preproc`; build.finalize splits that block into its own kernel and
folds it over the constant, so the artifact stores the packed weight and never repacks it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.target import Target

from ember.targets import lowering

log = logging.getLogger(__name__)

PREPROC = "meta_schedule.layout_rewrite_preproc"

# The largest register tile (accumulators) a rule may allocate. ember's lowering pipeline
# (targets/lowering.py) keeps a constant-size allocation up to this size on the stack, where LLVM
# promotes an unrolled tile to registers; TVM's own lowering made every allocation of 1024 bytes
# or more (and every "local" one) TVMBackendAllocWorkspace, a heap pointer LLVM cannot prove
# distinct from the kernel's operands, so it stored the accumulators on every iteration.
MAX_STACK_BYTES = lowering.STACK_TILE_BYTES

# Set by build.apply_schedules on kernels too small for a parallel launch; rules parallelize
# through `parallel`, which honours it.
SERIAL_ATTR = "ember.serial"

# A rule's tunable choices (register tile, bands or panels, serial or parallel), set by the
# tuner's knob search (targets/tune.py) on the kernel it hands the rule: {knob: int}. A rule
# reads each with `knob`, falling back to its own default; a value the kernel cannot take makes
# the rule decline (None). A rule offers its knobs through `knob_space(func, target)`.
KNOBS_ATTR = "ember.knobs"


def knob(func: tirx.PrimFunc, name: str, default: Any = None) -> Any:
    """The tuner's value of one of a rule's knobs on this kernel, else `default`."""
    knobs = func.attrs.get(KNOBS_ATTR) if func.attrs is not None else None
    if knobs is None or name not in knobs:
        return default
    return int(knobs[name])


def with_knobs(func: tirx.PrimFunc, knobs: dict[str, int]) -> tirx.PrimFunc:
    """The kernel carrying the tuner's knob values for its rule."""
    return func.with_attr(KNOBS_ATTR, {k: int(v) for k, v in knobs.items()}) if knobs else func


def serial(func: tirx.PrimFunc) -> bool:
    """Whether the kernel runs on the calling thread: the `serial` knob, else build's size mark."""
    value = knob(func, "serial")
    if value is not None:
        return bool(value)
    return bool(func.attrs is not None and func.attrs.get(SERIAL_ATTR))


# --- the target ------------------------------------------------------------------------------

def has_feature(target: Target, feature: str) -> bool:
    """Whether LLVM says the target's CPU has an ISA feature ("avx512f", "neon", "dotprod")."""
    try:
        return bool(tvm.target.codegen.target_has_features(feature, target))
    except Exception:  # not an llvm target, or a feature LLVM does not know for this triple
        return False


def vector_bits(target: Target) -> int:
    """Width of the widest fp32 SIMD register: 512 (AVX-512), 256 (AVX2), 128 (NEON, SSE)."""
    if str(target.attrs.get("mtriple", "")).startswith("x86_64") or target.attrs.get("mtriple") is None:
        if has_feature(target, "avx512f"):
            return 512
        if has_feature(target, "avx2") or has_feature(target, "avx"):
            return 256
    return 128


def dtype_bytes(dtype: str) -> int:
    """Bytes of one element."""
    return max(1, tvm.runtime.DataType(dtype).bits // 8)


def vector_lanes(target: Target, dtype: str = "float32") -> int:
    """SIMD lanes of `dtype` in one register."""
    return max(1, vector_bits(target) // tvm.runtime.DataType(dtype).bits)


def vector_registers(target: Target) -> int:
    """Architectural SIMD registers: 32 on AVX-512 and aarch64, 16 on AVX2/SSE."""
    if str(target.attrs.get("mtriple", "")).startswith("aarch64") or vector_bits(target) == 512:
        return 32
    return 16


# CPUs that execute a 512-bit FMA as two 256-bit halves: one 16-lane FMA a cycle, half the rate
# of Intel's AVX-512 cores (tools/peak.py, one thread: 120.9 GFLOP/s on a Zen 4 EPYC, 226.5 on
# an Intel one).
HALF_RATE_AVX512 = ("znver4",)


def full_rate_fma(target: Target) -> bool:
    """Whether the CPU retires two full-width vector FMAs a cycle (not a Zen 4 running AVX-512
    in halves). Where it does not, a conv's compute hides its weight's traffic from L2."""
    return not (vector_bits(target) == 512 and str(target.attrs.get("mcpu", "")) in HALF_RATE_AVX512)


def num_cores(target: Target) -> int:
    """Cores the target says it has (`num-cores`), else 1 (parallel loops still split work)."""
    return int(target.attrs.get("num-cores", 0) or 1)


# --- the kernel ------------------------------------------------------------------------------

@dataclass
class Kernel:
    """A PrimFunc's blocks in compute order, with the one reduction block (the anchor)."""

    sch: s_tir.Schedule
    blocks: list[SBlockInfo]
    anchor: SBlockInfo | None

    @property
    def before(self) -> list[SBlockInfo]:
        """Blocks computed before the anchor (pads, transposes, elementwise prologues)."""
        if self.anchor is None:
            return []
        return self.blocks[: self._anchor_index()]

    @property
    def after(self) -> list[SBlockInfo]:
        """Blocks computed after the anchor (bias, activation, residual add: the epilogue)."""
        if self.anchor is None:
            return []
        return self.blocks[self._anchor_index() + 1:]

    def _anchor_index(self) -> int:
        names = [b.name for b in self.blocks]
        return names.index(self.anchor.name)  # type: ignore[union-attr]


def analyze(func: tirx.PrimFunc, reductions: int = 1) -> Kernel | None:
    """The kernel's blocks; the anchor is its only reduction block. None when the function is
    not in dlight's normal form or has a different number of reduction blocks than asked."""
    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)
    if blocks is None:
        return None
    reds = [b for b in blocks if b.is_reduction()]
    if len(reds) != reductions:
        return None
    return Kernel(sch, blocks, reds[0] if reds else None)


def normalize(sch: s_tir.Schedule) -> list[SBlockInfo]:
    """The schedule's blocks, re-read (after a primitive that adds or removes blocks)."""
    blocks = normalize_prim_func(sch)
    if blocks is None:
        raise ValueError("kernel is not in normal form")
    return blocks


def cpu_blocks(func: tirx.PrimFunc, target: Target, narrow: bool = False) -> tuple[s_tir.Schedule, list[SBlockInfo]] | None:
    """A schedule of `func` (with `narrow`, its indices narrowed first) and its blocks in
    normal form, for a CPU rule; None for another target or a kernel not in normal form."""
    if target.kind.name != "llvm":
        return None
    sch = s_tir.Schedule(narrow_indices(func) if narrow else func)
    try:
        return sch, normalize(sch)
    except ValueError:
        return None


def narrow_indices(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A static-shape kernel with int32 loop and index arithmetic (cheaper addressing, and TVM
    0.27's LoopPartition mixes int32 constants into int64 loops); symbolic kernels unchanged."""
    if any(not isinstance(d, int) for p in func.params for d in buffer_shape(p)):
        return func
    try:
        narrowed = tvm.tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]
    except Exception:
        return func
    return narrowed


def root_block(sch: s_tir.Schedule) -> Any:
    """The function's root block."""
    return sch.get_sblock("root")


def layout_free(func: tirx.PrimFunc) -> set[int]:
    """Indices of the parameters that are compile-time constants (may be re-laid out)."""
    attr = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    return {int(i) for i in attr} if attr is not None else set()


def param_index(func: tirx.PrimFunc, buffer: Any) -> int | None:
    """Which parameter of `func` a buffer is (in TVM 0.27 a parameter is its buffer), or None."""
    for i, param in enumerate(func.params):
        if param.same_as(buffer):
            return i
    return None


def buffer_shape(buffer: Any) -> list[Any]:
    """A buffer's shape (ints where static)."""
    shape = getattr(buffer.ty, "shape", None) or ()  # a scalar parameter has none
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in shape]


def reads(sch: s_tir.Schedule, block: Any) -> list[tuple[Any, list[tirx.PrimExpr]]]:
    """(buffer, index expressions) of each read of a block, in the order `cache_read` numbers them."""
    return [(r.source, [rng.min for rng in r.region]) for r in sch.get(block).reads]


def writes(sch: s_tir.Schedule, block: Any) -> list[tuple[Any, list[tirx.PrimExpr]]]:
    """(buffer, index expressions) of each write of a block."""
    return [(r.source, [rng.min for rng in r.region]) for r in sch.get(block).writes]


def iter_vars(sch: s_tir.Schedule, block: Any) -> list[tuple[tirx.Var, str]]:
    """The block's iteration variables with their kind, "S" (spatial) or "R" (reduction)."""
    return [(iv.var, "R" if int(iv.iter_type) == 2 else "S") for iv in sch.get(block).iter_vars]


def free_vars(expr: tirx.PrimExpr) -> list[tirx.Var]:
    """The variables an index expression mentions."""
    return list(tirx.analysis.undefined_vars(expr))


def uses(expr: tirx.PrimExpr, var: tirx.Var) -> bool:
    """Whether an index expression mentions a variable."""
    return any(v.same_as(var) for v in free_vars(expr))


# --- schedule pieces -------------------------------------------------------------------------

def inline_all(sch: s_tir.Schedule, blocks: Sequence[SBlockInfo]) -> list[SBlockInfo]:
    """compute_inline (else reverse_compute_inline) every block that allows it, to a fixed
    point; the blocks left."""
    left = list(blocks)
    changed = True
    while changed:
        changed = False
        for info in list(left):
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(info.block_rv)
                except Exception:
                    continue
                left.remove(info)
                changed = True
                break
    return left


def inline_epilogue(sch: s_tir.Schedule, after: Sequence[SBlockInfo]) -> Any | None:
    """Inline the epilogue chain into its last block; that block (None when there is no
    epilogue, or when it does not reduce to a single block)."""
    if not after:
        return None
    for info in after[:-1]:
        try:
            sch.compute_inline(info.block_rv)
        except Exception:
            return _single_left(sch, after)
    return after[-1].block_rv


def _single_left(sch: s_tir.Schedule, after: Sequence[SBlockInfo]) -> Any | None:
    left = [info for info in after if exists(sch, info.block_rv)]
    return left[-1].block_rv if len(left) == 1 else None


def exists(sch: s_tir.Schedule, block: Any) -> bool:
    """Whether a block handle still names a block (inlining removes blocks)."""
    try:
        sch.get(block)
        return True
    except Exception:
        return False


def pack_weight(sch: s_tir.Schedule, block: Any, read_index: int, index_map: Callable[..., Any],
                pad_value: float | None = None) -> Any:
    """Re-lay out the block's read `read_index` (a layout-free parameter) by `index_map`, at
    compile time: a copy block marked PREPROC (folded into the constant by build.finalize)."""
    copy = sch.cache_read(block, read_index, "global")
    sch.annotate(copy, PREPROC, True)
    sch.transform_layout(block, ("read", read_index), index_map, pad_value=pad_value)
    return copy


def parallel(sch: s_tir.Schedule, loop: Any) -> None:
    """sch.parallel(loop), unless the kernel is marked too small to split across threads."""
    if serial(sch.mod["main"]):
        return
    sch.parallel(loop)


def largest_divisor(extent: int, candidates: Sequence[int]) -> int:
    """The largest candidate that divides `extent` (1 if none does)."""
    for c in candidates:
        if c > 0 and extent % c == 0:
            return c
    return 1


def static_extent(sch: s_tir.Schedule, loop: Any) -> int | None:
    """A loop's extent when it is a constant."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def is_int32(sch: s_tir.Schedule, loop: Any) -> bool:
    """Whether a loop's variable is int32 (a narrowed static kernel: LoopPartition works there)."""
    return str(sch.get(loop).loop_var.ty.dtype) == "int32"


def vectorize_row(sch: s_tir.Schedule, loop: Any, lanes: int, symbolic: bool = False) -> bool:
    """Vectorize a static innermost loop by `lanes`. A ragged extent (ViT's 197 positions) gets
    full vectors and one predicated tail split off by LoopPartition, which TVM 0.27 does only
    on int32 loops; elsewhere only extents `lanes` divides are vectorized. With `symbolic`, a
    loop of symbolic extent too (whole vectors, the tail split off). Whether it was."""
    extent = static_extent(sch, loop)
    if extent is None and divisible(sch, loop, lanes):  # (whole vectors by construction)
        _, lane = sch.split(loop, [None, lanes])
        sch.vectorize(lane)
        return True
    if extent is None and symbolic:
        outer, lane = sch.split(loop, [None, lanes])
        sch.annotate(outer, "pragma_loop_partition_hint", 1)
        sch.vectorize(lane)
        return True
    if not extent or extent < lanes or (extent % lanes and not is_int32(sch, loop)):
        return False
    outer, lane = sch.split(loop, [None, lanes])
    if extent % lanes:
        sch.annotate(outer, "pragma_loop_partition_hint", 1)
    sch.vectorize(lane)
    return True


def divisible(sch: s_tir.Schedule, loop: Any, factor: int) -> bool:
    """Whether `factor` provably divides a loop's extent, static or symbolic (a key length
    padded to ceil(S / 16) * 16 is divisible by 16)."""
    from tvm import sym

    extent = sch.get(loop).extent
    return bool(sym.Analyzer().can_prove_equal(tirx.floormod(extent, factor), 0))


def rfactor_row(sch: s_tir.Schedule, block: Any, lanes: int) -> Any | None:
    """A reduction over its innermost static loop as `lanes` partial results (rfactor): the
    partial block, or None where the reduction is left as it is. Only extents `lanes` divides:
    TVM 0.27's compute_at drops the predicate a ragged split leaves on the partial block (it
    would read past the row). rfactor needs the block alone under its loops, so call this
    before any compute_at, then vectorize_partials once the blocks are where they run."""
    inner = sch.get_loops(block)[-1]
    extent = static_extent(sch, inner)
    if (extent is not None and extent < 2 * lanes) or not divisible(sch, inner, lanes):
        return None
    _, lane = sch.split(inner, [None, lanes])
    return sch.rfactor(lane, len(writes(sch, block)[0][1]))  # lanes innermost in the buffer


def vectorize_partials(sch: s_tir.Schedule, rf: Any) -> None:
    """A partial block of rfactor_row: the lane loop moved innermost and vectorized. (Its init
    is decomposed after any parallel: sch.parallel rejects a partial update without its init.)"""
    # compute_at made one loop per block var, in their order: (lane, rows.., reduction)
    made = sch.get_loops(rf)[-len(sch.get(rf).iter_vars):]
    sch.reorder(*made[1:], made[0])
    sch.vectorize(made[0])


def vectorize_inner(sch: s_tir.Schedule, block: Any, lanes: int, cores: int = 1, threads: bool = True) -> None:
    """Spatial block: fuse its loops, vectorize the innermost `lanes` (when the innermost loop
    divides by them) and parallelize the outer part."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = static_extent(sch, loops[-1])
    vec = largest_divisor(inner, [lanes * 4, lanes * 2, lanes, lanes // 2, lanes // 4]) if inner else 1
    if inner is None and divisible(sch, loops[-1], lanes):
        # a symbolic length padded to whole vectors: vectorized, its outer loop kept out of the
        # parallel loop (fused, every vector paid 64-bit divisions by the symbolic extent)
        _, lane = sch.split(loops[-1], [None, lanes])
        sch.vectorize(lane)
        loops = sch.get_loops(block)[:-2]
    elif vec > 1:
        _, lane = sch.split(loops[-1], [None, vec])
        sch.vectorize(lane)
        loops = sch.get_loops(block)[:-1]
    elif inner is None and len(loops) > 1:
        # a symbolic innermost loop stays a loop of its own (LLVM vectorizes it): fused with the
        # outer ones, each element would pay 64-bit divisions by the symbolic extents
        loops = loops[:-1]
    if threads and loops:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        parallel(sch, fused)


_exists = exists  # (the name the conv rules were written against)
