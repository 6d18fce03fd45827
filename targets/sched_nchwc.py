"""CPU schedule rules for the blocked-layout kernels (targets/blocked.py): conv, depthwise conv
and pooling over `[N, C/b, H, W, b]` activations, each with its fused elementwise epilogue.

Conv (`ConvNCHWc`), the anchor `out[n, fo, y, x, o] += pad[n, co, y*s + ry*d, x*s + rx*d, ci]
* W[fo, co, ry, rx, ci, o]` with the weight packed at compile time:

    parallel  n, yo                 (bands of rows when the activations outweigh the weight;
      fo, yi                         else fo, n, y: channel panels, the batch inside)
        xo                          (column blocks of xr)
          co, ry, rx, ci            (reduction; rx unrolled)
            xi (unrolled xr) x fv (unrolled nv) x o (the b lanes: one vector)
        acc -> out[n, fo*nv + fv, y, xo*xr + xi, :] with the epilogue, one vector per pixel

The accumulator tile is xr x nv vectors, stored as xr*nv contiguous 64-byte runs; the input is
read as broadcast scalars (one pixel's ci lanes are contiguous) and the weight as nv vectors.

With channel panels whose weight outgrows the L1 (the deep 7x7 and 14x14 stages of a ResNet:
a 3x3 512 -> 512 panel holds 590 KB), each tile streamed the panel's whole weight from L2, once
per row of tiles. Those convs block the input channels instead (`_reduction_blocks`): a panel
takes its weight in chunks of kb channel blocks that fit the L1, every tile of the panel
accumulates one chunk before the next (each chunk's partial sums stored, TVM's rfactor), and a
last pass per panel adds the chunks' partial sums and applies the epilogue:

    parallel  fo
      co_o, n, y, xo                (a chunk of kb input channel blocks, then the panel's tiles)
        co_i, ry, rx, ci            (ci unrolled)
          xi x fv x o               -> partial[co_o, n, fv, y, x, :]
      n, y, x, fv: out = epilogue(sum over co_o of partial)

Window (`WindowNCHWc`): depthwise conv and pooling `out[n, c, y, x, i] = reduce pad[n, c, y*s +
ry*d, x*s + rx*d, i] (* W[c, 0, ry, rx, 0, i])`: vectors along the channel lanes, so a strided window
costs nothing extra; a register row of xr output pixels per tile, the taps unrolled.

The conv's padding stage runs per band of rows (each thread pads the rows it reads, into L2),
or once per call before the loop nest with channel panels; the window kernels read through the
padding's condition instead (it is uniform across a vector).
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, sym, tirx
from tvm.target import Target

from ember.targets import sched_common as sc
from ember.targets.blocked import LAYOUT_ATTR
from ember.targets.lowering import FULL_TILES
from ember.targets.sched_conv import SPATIAL_CHUNKS, SYMBOLIC_EXTENT, _column_block, _window_bands, activations_heavier

PAD_PREFIXES = ("pad_nchwc", "pad_temp")  # the padding stages: ours and TOPI pooling's


def _bands(row: Any, cores: int) -> int | None:
    """How many bands of rows a conv's output is split into across the threads: a divisor of
    the row count up to SPATIAL_CHUNKS that leaves the fewest threads idle in the last round
    (the largest such), None for a single row. (ResNet-50's 28-row maps in 7 bands kept one of
    2 threads idle a quarter of the time: 3x3 128->128 ran 1.60x faster at 2 threads than at
    1; 14 or 4 bands balance.) A symbolic height takes SPATIAL_CHUNKS bands, the last rows
    predicated."""
    if row is not None and not isinstance(row.dom, int):
        return SPATIAL_CHUNKS
    height = _extent(row)
    if height < 2:
        return None
    cores = max(cores, 1)

    def idle(d: int) -> float:
        return (-(-d // cores) * cores - d) / d

    options = [d for d in range(2, min(SPATIAL_CHUNKS, height) + 1) if height % d == 0] or [min(SPATIAL_CHUNKS, height)]
    return min(options, key=lambda d: (idle(d), -d))


def _loop_of(anchor: Any, expr: Any) -> Any | None:
    """The loop of an index that is one of the anchor's iter vars (None: a dropped unit loop,
    the index a constant 0). ValueError for any other index."""
    if isinstance(expr, tirx.IntImm) and int(expr) == 0:
        return None
    found = [it for it in anchor.iters if isinstance(expr, tirx.Var) and it.var.same_as(expr)]
    if len(found) != 1:
        raise ValueError("index is not an iter var")
    return found[0]


def _roles(sch: s_tir.Schedule, anchor: Any, read: int | None, positions: list[int]) -> tuple[list[Any], list[Any]] | None:
    """The anchor's loops by role: the five output axes [n, c, y, x, lanes] from its write index
    and the reductions from read `read`'s index at `positions` (None: the reductions in block
    order); a dropped unit loop is None. None when the anchor has another form or a symbolic
    extent other than the batch."""
    try:
        (_, out_idx), = sc.writes(sch, anchor.block_rv)
        if len(out_idx) != 5:
            return None
        spatial = [_loop_of(anchor, e) for e in out_idx]
        if read is None:
            reds = [it for it in anchor.iters if it.kind == "R"]
        else:
            idx = sc.reads(sch, anchor.block_rv)[read][1]
            reds = [_loop_of(anchor, idx[p]) for p in positions]
    except ValueError:
        return None
    present = [it for it in spatial + reds if it is not None]
    symbolic_ok = [spatial[0], spatial[2], spatial[3]]  # the batch, the image's height and width
    if len(present) != len(anchor.iters) or any(not isinstance(it.dom, int) for it in present
                                                 if not any(it is s for s in symbolic_ok)):
        return None
    return spatial, reds


def _extent(it: Any) -> int:
    return 1 if it is None else int(it.dom)


def _width(x: Any, cap: int) -> tuple[int, bool]:
    """(the width the column block is chosen for, whether it is symbolic). A symbolic width (a
    dynamic image size) computed in whole blocks of columns (blocked._whole_blocks) is tiled by
    the largest block up to `cap` its extent provably divides by; any other is tiled as if it
    were long, its last column block predicated."""
    if isinstance(x.dom, int):
        return x.dom, False
    analyzer = sym.Analyzer()
    whole = next((c for c in range(cap, 3, -1) if analyzer.can_prove(tirx.floormod(x.dom, c) == 0)), None)
    return (whole if whole is not None else SYMBOLIC_EXTENT), True


def _fold_tile(sch: s_tir.Schedule, block: Any, positions: tuple[int, int], xr: int, nv: int) -> None:
    """Fold the accumulator (`block`'s write after cache_write) to one static tile
    [x % xr, f % nv, lanes]. Compacted from the output, a symbolic width leaves it a symbolic
    size (min(xr, W - x)), which TVM makes heap workspace, and LLVM then stores every
    accumulator after each FMA (see sched_conv._tile_fold)."""
    f_pos, x_pos = positions

    def index_map(*axes: Any) -> list[Any]:
        f, x, lane = axes[f_pos], axes[x_pos], axes[-1]
        return [x % tirx.const(xr, str(x.ty.dtype)), f % tirx.const(nv, str(f.ty.dtype)), lane]

    sch.transform_layout(block, ("write", 0), index_map, assume_injective_transform=True)


def _loop(it: Any) -> Any:
    return None if it is None else it.loop_rv


def _order(sch: s_tir.Schedule, *loops: Any) -> None:
    sch.reorder(*[lp for lp in loops if lp is not None])


def _prologue(sch: s_tir.Schedule, before: list[Any]) -> list[Any]:
    """Inline every stage before the anchor except the padding; the padding stages left."""
    pads = []
    for info in before:
        if info.name.startswith(PAD_PREFIXES):
            pads.append(info.block_rv)
            continue
        try:
            sch.compute_inline(info.block_rv)
        except Exception:
            return []  # an unexpected prologue: the caller declines
    return pads


def _pad_stage(sch: s_tir.Schedule, pad: Any, lanes: int, at: Any | None) -> None:
    """The padding stage: computed under loop `at` (a band's rows, by the thread that reads
    them), else once for the whole tensor, parallel over its outer loops; the pixel's lanes
    vectorized (a plain input's block of one lane vectorizes along the row instead)."""
    if at is not None:
        sch.compute_at(pad, at, preserve_unit_loops=True)
    loops = sch.get_loops(pad)
    first = 0  # where the stage's own loops start
    if at is not None:
        first = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(at))) + 1
    if sc.static_extent(sch, loops[-1]) == 1 and len(loops) - first >= 2:
        loops = [*loops[:-2], sch.fuse(loops[-2], loops[-1])]
    inner = sc.static_extent(sch, loops[-1]) or 1
    if at is None and len(loops) > 1:
        sc.parallel(sch, sch.fuse(*loops[:-1]))
    vec = sc.largest_divisor(inner, [lanes, lanes // 2, lanes // 4])
    if vec > 1:
        _, lane = sch.split(sch.get_loops(pad)[-1], [None, vec])
        sch.vectorize(lane)


def _write_back(sch: s_tir.Schedule, acc: Any, at: Any, epilogue: Any, lanes: int, cores: int) -> None:
    """The register tile's store: the epilogue computed on it, loops unrolled, lanes vectorized."""
    if epilogue is not None:
        try:
            sch.reverse_compute_inline(epilogue)
        except Exception:  # an epilogue that reshapes: its own vectorized loop nest
            sc.vectorize_inner(sch, epilogue, lanes, cores)
    loops = sch.get_loops(acc)
    start = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(at))) + 1
    for lp in loops[start:-1]:
        sch.unroll(lp)
    sch.vectorize(loops[-1])


# The reduction-blocked conv (module doc): a chunk of the panel's weight up to CHUNK_BYTES (or
# one input block's, where that is more) stays in the L1 while the panel's tiles use it; the
# chunks' partial sums of a panel, up to PARTIAL_BYTES, stay in L2. Measured alone with the
# weight rotated through 12 copies (as inside a model, where it comes from L3), 1 / 2 threads:
# 3x3 512 -> 512 at 7x7 2.38 -> 1.95 ms / 1.27 -> 1.02 ms (chunks of 1 block, 18 KB; 2 blocks
# 2.05 ms at 1 thread); 1x1 2048 -> 512 at 7x7 1.05 -> 0.88 / 0.77 -> 0.52 ms (4 blocks, 8 KB;
# 8 blocks 0.94 ms at 1 thread); 1x1 1024 -> 256 at 14x14 0.72 -> 0.72 / 0.47 -> 0.39 ms.
CHUNK_BYTES = 10 << 10
PARTIAL_BYTES = 512 << 10
L1_CHUNK_LIMIT = 32 << 10  # a panel weight up to this stays in the L1 as it is


def _reduction_blocks(func: tirx.PrimFunc, panel_bytes: int, block_bytes: int, cib: int, tiles: int,
                      panel_out_bytes: int) -> int | None:
    """Input channel blocks per chunk of a channel panel's weight (module doc), None to keep the
    whole reduction in one pass: where the panel's weight fits the L1 already, where a panel is
    one tile (nothing reuses a chunk), or where the partial sums would not fit L2. The `kb`
    knob overrides (0: one pass; a value that does not split the blocks: ValueError)."""
    value = sc.knob(func, "kb")
    if value == 0:
        return None
    if value is not None:
        if cib % value or value >= cib:
            raise ValueError(f"kb={value} does not split {cib} input channel blocks")  # (the rule declines)
        return value
    if tiles < 2 or panel_bytes <= L1_CHUNK_LIMIT:
        return None
    fitting = [d for d in range(1, cib) if cib % d == 0 and (cib // d) * panel_out_bytes <= PARTIAL_BYTES]
    small = [d for d in fitting if d * block_bytes <= CHUNK_BYTES]
    return small[-1] if small else (fitting[0] if fitting else None)


# A symbolic batch or height (a dynamic batch or image size; a symbolic width takes no chunks)
# counts as this for the chunks' choice: a deep stage's maps at the input sizes CNNs are run at (7 to 20 pixels a side
# at 224 to 640; the partial sums then spill from L2 to L3 at worst, and stay correct).
TYPICAL_SIDE = 14


def _typical(it: Any, symbolic: int) -> int:
    """A loop's extent; `symbolic` where it is not a constant."""
    return symbolic if it is not None and not isinstance(it.dom, int) else _extent(it)


def _reduction_blocked(func: tirx.PrimFunc, target: Target, nv: int, xr: int, kb: int, symbolic: bool) -> s_tir.Schedule | None:
    """The conv scheduled with its input channels in chunks of kb blocks (module doc); None
    where the kernel has a form this schedule does not take (the caller keeps one pass)."""
    kernel = sc.analyze(func)
    sch, anchor = kernel.sch, kernel.anchor
    roles = _roles(sch, anchor, 1, [1, 2, 3, 4])
    if roles is None:
        return None
    (n, f, y, x, o), (rco, ry, rx, rci) = roles
    lanes = sc.vector_lanes(target, "float32")
    pads = _prologue(sch, kernel.before)
    epilogue = sc.inline_epilogue(sch, kernel.after)
    if kernel.after and epilogue is None:
        return None
    co_o, _ = sch.split(rco.loop_rv, [None, kb])
    partial = sch.rfactor(co_o, 0)  # partial[co_o, <out axes>] over (co_i, ry, rx, ci)
    final = anchor.block_rv  # out = sum over co_o of partial
    axes = {"n": n, "f": f, "y": y, "x": x, "o": o}
    present = [name for name in ("n", "f", "y", "x", "o") if axes[name] is not None]
    floops = sch.get_loops(final)[-len(present) - 1:]
    fl = dict(zip(present + ["co_o"], floops))
    fo, fv = sch.split(fl["f"], [None, nv])
    _order(sch, fo, fl.get("n"), fl.get("y"), fl["x"], fv, fl["co_o"], fl["o"])
    sch.vectorize(fl["o"])
    sc.parallel(sch, fo)
    sch.compute_at(partial, fo, preserve_unit_loops=True)
    ploops = sch.get_loops(partial)
    start = next(i for i, lp in enumerate(ploops) if sch.get(lp).same_as(sch.get(fo))) + 1
    reds = [name for name, it in (("co_i", rco), ("ry", ry), ("rx", rx), ("ci", rci)) if it is not None]
    pl = dict(zip(["co_o"] + present + reds, ploops[start:]))
    xo, xi = sch.split(pl["x"], [None, xr])
    _order(sch, pl["co_o"], pl.get("n"), pl.get("y"), xo, *[pl[r] for r in reds], xi, pl["f"], pl["o"])
    acc = sch.cache_write(partial, 0, "local")
    sch.reverse_compute_at(acc, xo)
    if symbolic:  # (partial[co_o, n, f, y, x, :]: one static tile, as _fold_tile says why)
        _fold_tile(sch, partial, (2, 4), xr, nv)
    _write_back(sch, acc, xo, None, lanes, sc.num_cores(target))
    sch.vectorize(pl["o"])
    sch.unroll(xi)
    sch.unroll(pl["f"])
    if "ci" in pl:
        sch.unroll(pl["ci"])  # (the taps left rolled: unrolling the channels measured 2.02 -> 1.95 ms)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, fo)
        sch.vectorize(sch.get_loops(epilogue)[-1])
    for pad in pads:
        _pad_stage(sch, pad, lanes, None)
    sch.decompose_reduction(partial, pl[reds[0]])
    return sch


class ConvNCHWc:
    """Blocked-layout conv (see module doc)."""

    name = "ember.ConvNCHWc"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        kernel = sc.analyze(func)
        if kernel is None or kernel.anchor is None or not kernel.anchor.name.startswith("conv_nchwc"):
            return None
        sch, anchor = kernel.sch, kernel.anchor
        roles = _roles(sch, anchor, 1, [1, 2, 3, 4])  # W[fo, co, ry, rx, ci, o]
        if roles is None:
            return None
        (n, f, y, x, o), (rco, ry, rx, rci) = roles
        if x is None or o is None:
            return None
        cob, kw = _extent(f), _extent(rx)
        lanes = sc.vector_lanes(target, "float32")
        regs = sc.vector_registers(target)
        pads = _prologue(sch, kernel.before)
        if len(pads) != len([i for i in kernel.before if i.name.startswith(PAD_PREFIXES)]):
            return None
        epilogue = sc.inline_epilogue(sch, kernel.after)
        nv = sc.knob(func, "nv", 2 if cob % 2 == 0 else 1)
        if nv < 1 or cob % nv:
            return None
        # Accumulators take every register but the nv weight vectors and a broadcast or two:
        # each weight vector loaded then feeds xr FMAs (ResNet-50 at 2 threads: 38.4 -> 34.8 ms
        # against half the registers). A plain image input (blocks of one channel, the stem)
        # keeps half: its wide tile measured 0.83 -> 1.40 ms.
        cap = (regs - nv - 2) // nv if rci is not None else regs // 2 // nv
        cap = max(4, cap)
        width, symbolic = _width(x, cap)
        if sc.knob(func, "xr") is not None:
            cap = sc.knob(func, "xr")
            if cap < 1 or cap * nv > regs - nv - 1:
                return None
        xr = _column_block(width, cap) if cap >= 4 else min(cap, width)
        # Over a symbolic width in whole blocks with room for two in the registers (blocked.
        # PAIRED_COLUMN_BLOCK), a tile takes two blocks; lowering.split_full_tiles runs the full
        # tiles and a row's odd block without column predicates.
        paired = symbolic and width != SYMBOLIC_EXTENT and 2 * xr <= cap and sc.knob(func, "xr") is None
        if paired:
            xr *= 2
        fo, fv = sch.split(f.loop_rv, [None, nv]) if f is not None else (None, None)
        xo, xi = sch.split(x.loop_rv, [None, xr])
        if symbolic and not paired:  # (a width not in whole blocks: full column blocks, then the ragged one)
            sch.annotate(xo, "pragma_loop_partition_hint", 1)
        reads = sc.reads(sch, anchor.block_rv)
        data_buf, w_buf = reads[0][0], reads[1][0]
        out_buf = sch.get(anchor.block_rv).writes[0].source
        parts = _bands(y, sc.num_cores(target))
        if parts and sc.knob(func, "bands") is not None:
            parts = sc.knob(func, "bands")
            if parts < 2 or (isinstance(y.dom, int) and parts > y.dom):
                return None
        reds = [_loop(it) for it in (rco, ry, rx, rci)]
        heavier = activations_heavier(w_buf, data_buf, out_buf, y is not None and not isinstance(y.dom, int))
        banded = bool(parts) and bool(sc.knob(func, "banded", heavier))
        kb = None
        # (its threads take whole panels: only where there are enough of them; not over a
        # symbolic width, whose chunks would be sized for a guess: a dynamic ResNet-18 at 320 x
        # 256 ran 1.55x onnxruntime with chunks sized for 14 x 14 maps, 1.13x in one pass (1
        # thread); along a signal of one row, thousands of samples long, wav2vec2's 256-channel
        # convs had 13 MB of partial sums a panel, the model 0.89 -> 1.06x onnxruntime. And only
        # where the FMAs outrun L2: on a Zen 4, whose AVX-512 FMAs run at half rate, chunks
        # cost ResNet-18 0.98 -> 1.12x onnxruntime and ResNet-50 0.96 -> 1.00x at 2 threads)
        # One row of output (a conv1d along a signal) whose activations outweigh its weight:
        # threads take the column tiles, each computing every channel panel, so a tile's input
        # is read once and the weight stays in L2. With the panels parallel and outermost, each
        # panel streamed the whole input from memory: wav2vec2's 256 -> 256 stride-2 convs over
        # 12800 and 6400 samples (13 and 6.5 MB) ran at 49-51% of peak at 1 thread.
        one_row = y is None or (isinstance(y.dom, int) and y.dom == 1)
        columns = not banded and one_row and f is not None and heavier and bool(sc.knob(func, "columns", 1))
        rows = _typical(y, TYPICAL_SIDE)
        chunks_pay = sc.full_rate_fma(target) if sc.knob(func, "kb") is None else sc.knob(func, "kb") != 0
        if not banded and not columns and f is not None and cob // nv >= sc.num_cores(target) and not symbolic and chunks_pay:
            block_bytes = nv * _extent(ry) * kw * _extent(rci) * _extent(o) * 4  # one input block's weight
            pixels = _typical(n, 1) * rows * _extent(x)
            tiles = _typical(n, 1) * rows * -(-_extent(x) // xr)
            kb = _reduction_blocks(func, block_bytes * _extent(rco), block_bytes, _extent(rco), tiles,
                                   pixels * nv * _extent(o) * 4)
        if kb is not None:
            try:
                blocked = _reduction_blocked(func, target, nv, xr, kb, not all(
                    isinstance(it.dom, int) for it in (n, y) if it is not None))
            except Exception:  # (a form the chunked schedule does not take: one pass below)
                blocked = None
            if blocked is not None:
                return blocked
        tile_at = xo
        if banded:  # (the rows are split into bands below, after the write-back is placed)
            _order(sch, _loop(n), y.loop_rv, fo, xo, *reds, xi, fv, o.loop_rv)
        elif columns:
            _order(sch, _loop(n), _loop(y), xo, fo, *reds, xi, fv, o.loop_rv)
            outer = [xo]
            tile_at = fo
        else:
            # each panel's weights serve every image of the batch before the next panel
            # (batch 8: ResNet-18 112.5 -> 107.2 ms, ResNet-50 271.5 -> 267.3 ms at 2 threads)
            _order(sch, fo, _loop(n), _loop(y), xo, *reds, xi, fv, o.loop_rv)
            outer = [fo, _loop(n), _loop(y)]
        acc = sch.cache_write(anchor.block_rv, 0, "local")
        sch.reverse_compute_at(acc, tile_at)
        if symbolic:
            _fold_tile(sch, anchor.block_rv, (1, 3), xr, nv)
        _write_back(sch, acc, tile_at, epilogue, lanes, sc.num_cores(target))
        if banded:
            # Split into bands only now, so the write-back (with the epilogue inlined) gets the
            # split's row predicate too (see sched_conv.ConvBlocked).
            yo, yi = sch.split(y.loop_rv, [parts, None])
            _order(sch, yo, fo, yi)
            outer = [_loop(n), yo]
        outer = [lp for lp in outer if lp is not None]
        sch.vectorize(o.loop_rv)
        sch.unroll(xi)
        if fv is not None:
            sch.unroll(fv)
        if kw > 1:
            sch.unroll(rx.loop_rv)
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sc.parallel(sch, fused)
        for pad in pads:
            # with bands, each band pads its own rows (and halo) just before reading them, from
            # L2: a whole-tensor padded copy went to memory and back (ResNet-18 15.35 -> 14.78 ms,
            # ResNet-50 35.5 -> 34.3 ms at 2 threads; ResNet-18 28.8 -> 28.4 ms at 1)
            _pad_stage(sch, pad, lanes, fused if banded else None)
        first = next((lp for lp in reds if lp is not None), None)
        if first is not None:
            sch.decompose_reduction(anchor.block_rv, first)
        if paired:
            sch.annotate(xo, FULL_TILES, xr)
        return sch

    def knob_space(self, func: tirx.PrimFunc, target: Target) -> dict[str, list[int]]:
        """What the tuner may try (values a kernel cannot take make `apply` decline): vectors
        per tile, pixels per tile, bands of rows or channel panels, column tiles or channel
        panels for one row of output, how many bands, input channel blocks per chunk of a
        panel's weight (0: one pass)."""
        cores = sc.num_cores(target)
        return {"nv": [1, 2, 4], "xr": [4, 6, 7, 8, 12, 14, 16], "banded": [0, 1], "columns": [0, 1],
                "bands": sorted({cores, 2 * cores, 4 * cores, 7, 8, 14}), "kb": [0, 1, 2, 4, 8, 16]}


class WindowNCHWc:
    """Blocked-layout depthwise conv and pooling (see module doc)."""

    name = "ember.WindowNCHWc"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        kernel = sc.analyze(func)
        if kernel is None or kernel.anchor is None:
            return None
        sch, anchor = kernel.sch, kernel.anchor
        block = sch.get(anchor.block_rv)
        is_depthwise = anchor.name.startswith("depthwise_nchwc") and LAYOUT_ATTR in block.annotations
        if not (is_depthwise or anchor.name.startswith(("pool_max", "pool_sum"))):
            return None
        roles = _roles(sch, anchor, 1 if is_depthwise else None, [2, 3])  # W[c, 0, ry, rx, 0, i]
        if roles is None:
            return None
        (n, c, y, x, i), taps_info = roles
        if x is None or i is None:
            return None
        taps = 1
        for it in taps_info:
            taps *= _extent(it)
        lanes = sc.vector_lanes(target, "float32")
        pads = _prologue(sch, kernel.before)
        if len(pads) != len([b for b in kernel.before if b.name.startswith(PAD_PREFIXES)]):
            return None
        epilogue = sc.inline_epilogue(sch, kernel.after)
        cap = sc.knob(func, "xr", 8)
        if not 1 <= cap <= sc.vector_registers(target) - 4:
            return None
        width, symbolic = _width(x, cap)
        xr = _column_block(width, cap) if cap >= 4 else min(cap, width)
        xo, xi = sch.split(x.loop_rv, [None, xr])
        if symbolic:  # (a width not in whole blocks, as a pool's: full column blocks, then the ragged one)
            sch.annotate(xo, "pragma_loop_partition_hint", 1)
        parts = _window_bands(y)
        bands = sc.knob(func, "bands")
        if bands is not None:
            if isinstance(y.dom, int) and bands > y.dom:
                return None
            parts = bands if bands >= 2 else None
        reds = [_loop(it) for it in taps_info]
        if parts:
            yo, yi = sch.split(y.loop_rv, [parts, None])
            _order(sch, _loop(n), yo, _loop(c), yi, xo, *reds, xi, i.loop_rv)
            outer = [_loop(n), yo]
        else:
            _order(sch, _loop(n), _loop(c), _loop(y), xo, *reds, xi, i.loop_rv)
            outer = [_loop(n), _loop(c)]
        outer = [lp for lp in outer if lp is not None]
        acc = sch.cache_write(anchor.block_rv, 0, "local")
        sch.reverse_compute_at(acc, xo)
        if symbolic:
            _fold_tile(sch, anchor.block_rv, (1, 3), xr, 1)
        _write_back(sch, acc, xo, epilogue, lanes, sc.num_cores(target))
        sch.vectorize(i.loop_rv)
        sch.unroll(xi)
        if taps <= 16:
            for lp in reds:
                if lp is not None:
                    sch.unroll(lp)
        if outer:
            sc.parallel(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
        for pad in pads:
            # read through the padding's condition, which is the same for every lane of a
            # vector (it depends on the pixel, not the channel): a padded copy, whole or per
            # band and channel block, is an extra pass over a large activation (ResNet's
            # 112x112 max pool at 1 thread: 0.47 ms with one, 0.32 ms inline; MobileNetV2's
            # depthwise kernels: 1.43 -> 1.21 ms)
            sch.compute_inline(pad)
        first = next((lp for lp in reds if lp is not None), None)
        if first is not None:
            sch.decompose_reduction(anchor.block_rv, first)
        return sch

    def knob_space(self, func: tirx.PrimFunc, target: Target) -> dict[str, list[int]]:
        """Pixels per register row; bands of rows (0: channel blocks across threads instead)."""
        cores = sc.num_cores(target)
        return {"xr": [4, 7, 8, 14, 16], "bands": sorted({0, cores, 2 * cores, 4, 7})}


# A conversion kernel moves tiles of this many pixels x one channel block (a few KB, in L1).
RELAYOUT_PIXELS = 16


class Relayout:
    """The conversion kernels between NCHW (or NCW) and the blocked layout (blocked.plain_kernel,
    blocked_kernel): tiles of RELAYOUT_PIXELS pixels x one channel block, parallel over the
    tiles. TVM's loop nest, vectorized along the pixels of one channel, wrote each output
    line 64 bytes at a time from 16 iterations far apart (NCW -> blocked over 256 x 12799
    floats: 5.0 ms, 5 GB/s); within a tile every line is written whole while it is in L1."""

    name = "ember.Relayout"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        found = sc.cpu_blocks(func, target)
        if found is None:
            return None
        sch, blocks = found
        if not blocks or not blocks[-1].name.startswith("te_layout_transform") or any(b.is_reduction() for b in blocks):
            return None
        if sc.inline_all(sch, blocks[:-1]):
            return None
        block = sch.get_sblock(blocks[-1].name)
        (src, src_idx), = sc.reads(sch, block)
        (dst, dst_idx), = sc.writes(sch, block)
        shapes = [sc.buffer_shape(src), sc.buffer_shape(dst)]
        if sorted(len(x) for x in shapes) not in ([3, 5], [4, 5]):
            return None
        from_blocked = len(shapes[0]) == 5
        plain_idx = dst_idx if from_blocked else src_idx
        lanes = shapes[0 if from_blocked else 1][-1]
        if not isinstance(lanes, int) or lanes < 2:
            return None
        loops = sch.get_loops(block)
        infos = sch.get(block).iter_vars
        if len(loops) != len(infos):
            return None

        def loop_of(expr: Any) -> Any | None:
            found = [lp for lp, iv in zip(loops, infos) if isinstance(expr, tirx.Var) and expr.same_as(iv.var)]
            return found[0] if len(found) == 1 else None

        width = loop_of(plain_idx[-1])
        if width is None:
            return None
        if from_blocked:  # blocked -> plain: the source's lanes are one loop
            lane = loop_of(src_idx[-1])
            if lane is None or lane is width:
                return None
            outer = [lp for lp in loops if lp is not lane and lp is not width]
            extent = sc.static_extent(sch, width)
            wo, wi = sch.split(width, [None, RELAYOUT_PIXELS])
            if extent is not None and extent % RELAYOUT_PIXELS == 0:
                # each channel's run of the tile's pixels is one vector store (a whole line),
                # its lanes gathered from the tile in L1: lane by lane, a pixel's 16 scalar
                # stores went to 16 channel planes, which on a 128 x 160 map (planes 80 KB
                # apart, a multiple of 4 KB) fight over one L1 set: 3.8 -> 0.30 ms for 64
                # channels; 0.24 -> 0.16 ms at 112 x 112
                sch.reorder(*outer, wo, lane, wi)
                sch.vectorize(wi)
            else:  # (a ragged or symbolic row: 125 x 157 ran 0.46 ms so, 0.65 ms predicated)
                sch.reorder(*outer, wo, wi, lane)
                sch.vectorize(lane)  # (one vector load of a pixel's channels, then its lanes stored)
        else:  # plain -> blocked: the channel loop is split into blocks of `lanes`
            channel = loop_of(plain_idx[1])
            if channel is None or channel is width:
                return None
            outer = [lp for lp in loops if lp is not channel and lp is not width]
            cb, ci = sch.split(channel, [None, lanes])
            if sc.static_extent(sch, width) is None:
                # a symbolic row: each pixel's lanes one vector store, gathered from the channel
                # planes, the row a loop of its own; tiles of the row fused into the parallel
                # loop divided by the symbolic width at every element (PP-OCRv4's detector
                # at 640 x 640, 96 channels at 160 x 160: 10.9 ms, 1.8 GB/s; so, 1.06 ms)
                sch.reorder(*outer, cb, width, ci)
                sch.vectorize(ci)
                sc.parallel(sch, sch.fuse(*outer, cb))
                return sch
            wo, wi = sch.split(width, [None, RELAYOUT_PIXELS])
            sch.reorder(*outer, cb, wo, ci, wi)
            outer = [*outer, cb]
        sc.parallel(sch, sch.fuse(*outer, wo))
        return sch


RULES = [ConvNCHWc(), WindowNCHWc(), Relayout()]
