"""ember.passes: one module per graph rewrite, the explicit registry PASSES and one line each
describing it (`ember passes` and `--help` show them)."""

from __future__ import annotations

from collections.abc import Callable

from ember.compiler.ir import Graph
from ember.compiler.rewrite import PassResult
from ember.passes.cse import cse
from ember.passes.dce import dce
from ember.passes.fold_batchnorm import fold_batchnorm
from ember.passes.fold_constants import fold_constants
from ember.passes.fuse import fuse
from ember.passes.fuse_composites import fuse_composites
from ember.passes.inline_branches import inline_branches
from ember.passes.simplify import simplify
from ember.passes.unroll_loops import unroll_loops

PASSES: dict[str, Callable[[Graph], PassResult]] = {
    "fold_constants": fold_constants,
    "dce": dce,
    "cse": cse,
    "simplify": simplify,
    "inline_branches": inline_branches,
    "unroll_loops": unroll_loops,
    "fold_batchnorm": fold_batchnorm,
    "fuse_composites": fuse_composites,
    "fuse": fuse,
}

DESCRIPTIONS: dict[str, str] = {
    "fold_constants": "evaluate nodes whose inputs are all constant, and static shape arithmetic",
    "dce": "remove nodes and constants no graph output depends on",
    "cse": "merge duplicate nodes and duplicate small constants",
    "simplify": "drop identities and no-ops (Identity, x*1, x+0, same-shape Reshape, Transpose pairs...)",
    "inline_branches": "replace each If whose condition is known at compile time by its taken branch",
    "unroll_loops": "unroll each Loop and Scan whose iteration count is known at compile time (bounded)",
    "fold_batchnorm": "fold BatchNormalization and per-channel Mul/Add into Conv/Gemm/MatMul weights",
    "fuse_composites": "rewrite decomposed GELU, LayerNorm, Softmax and attention to single ops",
    "fuse": "group anchors (Conv, MatMul, pooling...) with elementwise epilogues into one kernel each",
}
