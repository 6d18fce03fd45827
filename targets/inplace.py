"""In-place epilogues: a kernel that ends `out[i] = f(..., r[i])`, where `r` is a tensor no one
reads afterwards (a residual branch's last use), writes its result into `r`'s memory.

    lv9 = call_tir(fused_conv_add_relu, (x, w, b, lv3), out=f32[1,256,56,56])      # before
    lv9 = call_tir_inplace(fused_conv_add_relu_inplace, (x, w, b, lv3), inplace=[3]) # after

Inside a model a kernel's fresh output buffer is cold: every line it writes is first read from
memory (write-allocate) and evicts a dirty line. Measured on ResNet-50's 1x1 conv + add + relu
(64 -> 256 channels, 56x56, 2 threads): 0.48 ms with every operand in cache, 1.21 ms with only
the output flushed, 1.27 ms with only the residual flushed. Written in place, the residual's
lines are read once and written back where they are, so the output costs no extra traffic.

Safe only when nothing can observe `r` afterwards, so a call qualifies when
- `r` is produced by an earlier `call_tir` of the same function (its own allocation; not a
  reshape kernel, which tvm.compile turns into a view of its input; not a parameter or
  constant),
- this call is the last use of `r` (once among its arguments; later bindings and the function's
  result do not read it), and only kernels read it (no reshape, in main or as a reshape
  kernel, can alias it),
- `r` has the output's shape and dtype, and the call has one output and no shape arguments,
- in the kernel, every block that reads `r` writes the output at exactly the indices it reads
  `r` at (one element each), so each element of `r` is read before the same element is written
  and never again.
The kernel is rewritten with `r`'s parameter taking the output's place (PrimFunc.specialize),
under a new name (`<kernel>_inplace`); the original stays for call sites that do not qualify.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx

SUFFIX = "_inplace"


def _call_tir() -> Any:
    return tvm.ir.Op.get("relax.call_tir")


def is_kernel_call(expr: Any) -> bool:
    """Whether a Relax expression launches a kernel: call_tir or call_tir_inplace."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in (
        "relax.call_tir", "relax.call_tir_inplace")


def _blocks(sch: s_tir.Schedule) -> list[Any]:
    """Every block of a (scheduled) kernel, outermost first."""
    found, stack = [], [sch.get_sblock("root")]
    while stack:
        block = stack.pop()
        found.append(sch.get(block))
        stack.extend(sch.get_child_blocks(block))
    return found


def _elementwise_reader(func: tirx.PrimFunc, r: Any, out: Any) -> bool:
    """Whether in `func` the blocks that read `r` are exactly the blocks that write `out`, each
    reading one element of `r` at the indices where it writes `out`, and nothing writes `r`."""
    try:
        blocks = _blocks(s_tir.Schedule(func))
    except Exception:  # a kernel the schedule API cannot open: leave it alone
        return False
    readers = 0
    for block in blocks:
        if any(w.source.same_as(r) for w in block.writes):
            return False
        reads = [rd for rd in block.reads if rd.source.same_as(r)]
        writes = [w for w in block.writes if w.source.same_as(out)]
        if not reads and not writes:
            continue
        if len(reads) != 1 or len(writes) != 1:
            return False  # a block writes `out` without reading `r` there (or the converse)
        (read,), (write,) = reads, writes
        for region in (read.region, write.region):
            if any(not (isinstance(rng.extent, tirx.IntImm) and int(rng.extent) == 1) for rng in region):
                return False
        if len(read.region) != len(write.region) or not all(
            tvm_ffi.structural_equal(a.min, b.min) for a, b in zip(read.region, write.region)
        ):
            return False
        readers += 1
    return readers > 0


def _renumber(func: tirx.PrimFunc, moved: int, count: int) -> tirx.PrimFunc:
    """`layout_free_buffers` after parameter `moved` (of `count` inputs) went to the end."""
    free = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    if not free:
        return func
    kept = [int(i) - (1 if int(i) > moved else 0) for i in free if int(i) != moved and int(i) < count]
    return func.with_attr("layout_free_buffers", kept) if kept else func.without_attr("layout_free_buffers")


def use_inplace(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, str]]:
    """`mod` (scheduled) with the qualifying `call_tir`s of `main` turned into `call_tir_inplace`
    (see the module doc); and {in-place kernel: the kernel it was made from}."""
    mod = relax.transform.CanonicalizeBindings()(mod)  # `lv = lv1` aliases (finalize leaves them) folded
    main = mod["main"]
    if not isinstance(main, relax.Function) or not isinstance(main.body, relax.SeqExpr):
        return mod, {}
    call_tir = _call_tir()
    bindings = [b for block in main.body.blocks for b in block.bindings]

    def reshape_kernel(value: Any) -> bool:
        # tvm.compile's RewriteDataflowReshape turns these into views of their input
        func = mod[value.args[0]] if isinstance(value.args[0], relax.GlobalVar) else None
        if not isinstance(func, tirx.PrimFunc):
            return False
        try:
            return bool(relax.analysis.has_reshape_pattern(func))
        except Exception:  # a hand-written kernel with no root block (the recurrences): not a reshape
            return False

    kernels = {b.var for b in bindings if isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Call)
               and b.value.op.same_as(call_tir) and not reshape_kernel(b.value)}
    fresh = set(kernels)  # results of kernels: their own memory
    last: dict[Any, int] = {}  # var -> index of the last binding that reads it
    viewed: set[Any] = set()  # vars something other than a kernel reads: a view (reshape) may alias them
    for index, b in enumerate(bindings):
        for var in relax.analysis.free_vars(b.value):
            last[var] = index
            if b.var not in kernels:
                viewed.add(var)
    viewed.update(relax.analysis.free_vars(main.body.body))  # the result: never written over

    made: dict[tuple[str, int], relax.GlobalVar] = {}
    rewritten: dict[Any, relax.Call] = {}
    for index, b in enumerate(bindings):
        call = b.value
        if not (isinstance(b, relax.VarBinding) and isinstance(call, relax.Call) and call.op.same_as(call_tir)):
            continue
        if len(call.args) != 2 or not isinstance(call.args[1], relax.Tuple):
            continue  # shape (tir_vars) arguments: leave it
        out_info = call.ty
        if not isinstance(out_info, relax.TensorType):
            continue
        gv, args = call.args[0], list(call.args[1].fields)
        func = mod[gv]
        if not isinstance(func, tirx.PrimFunc) or len(func.params) != len(args) + 1:
            continue
        for j, arg in enumerate(args):
            if not (arg in fresh and arg not in viewed and last.get(arg) == index
                    and sum(a.same_as(arg) for a in args) == 1):
                continue
            if not tvm_ffi.structural_equal(arg.ty, out_info):
                continue
            r, out = func.params[j], func.params[-1]
            if not _elementwise_reader(func, r, out):
                continue
            key = (gv.name_hint, j)
            if key not in made:
                try:
                    specialized = func.specialize({r: out})
                except Exception:  # (TVM 0.27: a shape like ((H+1)//2+1)//2 is no independent var)
                    continue  # the kernel keeps a fresh output
                inplace = _renumber(specialized, j, len(args))
                builder = relax.BlockBuilder(mod)  # add_func gives the new GlobalVar its type
                made[key] = builder.add_func(inplace, gv.name_hint + SUFFIX + ("" if j == len(args) - 1 else str(j)))
                mod = builder.get()
            order = args[:j] + args[j + 1:] + [arg]
            rewritten[b.var] = relax.op.call_tir_inplace(made[key], relax.Tuple(order), [len(args) - 1], out_info)
            break
    if not rewritten:
        return mod, {}
    blocks = []
    for block in main.body.blocks:
        new = [relax.VarBinding(b.var, rewritten[b.var]) if b.var in rewritten else b for b in block.bindings]
        blocks.append(relax.DataflowBlock(new) if isinstance(block, relax.DataflowBlock) else relax.BindingBlock(new))
    mod["main"] = relax.Function(main.params, relax.SeqExpr(blocks, main.body.body), main.ret_ty,
                                 main.is_pure, main.attrs)
    return mod, {gv.name_hint: name for (name, _), gv in made.items()}
