"""ember's TIR lowering pipeline: TVM's default one, plus register tiles placed on the stack.

TVM lowers a constant-size CPU allocation to a stack alloca only when it is "global" scope and
under 1024 bytes (`runtime::kMaxStackAlloca`); anything else becomes TVMBackendAllocWorkspace,
a heap pointer. LLVM promotes a stack tile whose every access has a constant index (an unrolled
register tile) to registers; a workspace pointer it cannot prove distinct from the kernel's
operands, so a workspace accumulator is stored after every FMA unless LLVM happens to inline the
kernel's compute function into a context where it can (which depends on what else the library
holds: a CRNN's convs ran 2.3 or 5.7 ms depending on its LSTM kernels).

`stack_tiles` marks every constant-size CPU allocation of at most STACK_TILE_BYTES with TVM's
`disable_lower_builtin` annotation, which LowerTVMBuiltin honours by leaving it an alloca. The
schedule rules may then keep accumulator tiles of up to STACK_TILE_BYTES (`sched_common.
MAX_STACK_BYTES`): the matmul's tile of 24 accumulators (1536 bytes) instead of 14.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import tirx

# The largest allocation kept on the stack. A kernel runs on TVM's worker threads (8 MB stacks)
# and holds a handful of such tiles at most.
STACK_TILE_BYTES = 4096

DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin
PIPELINE = "ember"


def _stack_size(buffer: tirx.Buffer) -> int | None:
    """The bytes of a constant-size flat allocation, None when not constant."""
    if len(buffer.shape) != 1 or not isinstance(buffer.shape[0], tirx.IntImm):
        return None
    return int(buffer.shape[0]) * tvm.DataType(str(buffer.dtype)).bits * tvm.DataType(str(buffer.dtype)).lanes // 8


def _is_cpu(func: tirx.PrimFunc) -> bool:
    target = func.attrs.get("target") if func.attrs is not None else None
    return target is None or target.kind.name in ("llvm", "c")


@tirx.transform.prim_func_pass(opt_level=0, name="ember.StackTiles")
def stack_tiles(func: tirx.PrimFunc, _mod: Any, _ctx: Any) -> tirx.PrimFunc:
    """Keep small constant-size CPU allocations on the stack (see the module docstring)."""
    if not _is_cpu(func):
        return func

    def mark(stmt: tirx.AllocBuffer) -> tirx.AllocBuffer:
        if DISABLE_LOWER_BUILTIN in stmt.annotations:
            return stmt
        nbytes = _stack_size(stmt.buffer)
        if nbytes is None or not 0 < nbytes <= STACK_TILE_BYTES:
            return stmt
        return tirx.AllocBuffer(stmt.buffer, {**dict(stmt.annotations), DISABLE_LOWER_BUILTIN: tirx.IntImm("int32", 1)},
                                stmt.span)

    body = tvm_ffi.structural_map(func.body, [(tirx.AllocBuffer, mark)])
    return func if body.same_as(func.body) else func.with_body(body)


def _pipeline(**kwargs: Any) -> tuple[Any, Any, Any]:
    main, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("s_tir", **kwargs)
    return tvm.transform.Sequential([main, stack_tiles]), finalize_host, finalize_device


tvm.tirx.compilation_pipeline.register_tir_pipeline(PIPELINE, _pipeline)
