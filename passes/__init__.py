"""ember.passes: one module per graph rewrite, and the explicit registry PASSES."""

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
from ember.passes.simplify import simplify

PASSES: dict[str, Callable[[Graph], PassResult]] = {
    "fold_constants": fold_constants,
    "dce": dce,
    "cse": cse,
    "simplify": simplify,
    "fold_batchnorm": fold_batchnorm,
    "fuse_composites": fuse_composites,
    "fuse": fuse,
}
