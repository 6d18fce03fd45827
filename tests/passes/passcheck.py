"""What every pass test checks: Before/Expected text, verify, idempotence, print/parse round
trip, and numeric agreement with the interpreter on fresh random inputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ember.compiler import interp
from ember.compiler.ir import Graph
from ember.compiler.parser import graph_tensors, parse_graph
from ember.compiler.printer import print_graph
from ember.compiler.rewrite import PassResult
from ember.compiler.verify import verify
from ember.passes import PASSES

# Per output dtype: (rtol, atol). Rewrites reassociate float math (BatchNorm folding scales the
# weights before the convolution, LayerNorm is computed in one kernel), so f32 is not bit-exact.
TOLERANCES = {"f64": (1e-10, 1e-12), "f32": (1e-5, 1e-5), "f16": (1e-3, 1e-3)}


def body(text: str) -> str:
    """A dump's text without its header line."""
    return text.split("\n", 1)[1] if text.startswith("#") else text


def assert_same_numbers(before: Graph, after: Graph, rng: np.random.Generator,
                        dims: Mapping[str, int] | None = None, tolerances: Mapping[str, tuple[float, float]] = TOLERANCES) -> None:
    """Both graphs give the same outputs on fresh random inputs (exact for non-floats)."""
    feeds = interp.random_feeds(before, rng, dims or {})
    want, got = interp.run(before, feeds), interp.run(after, feeds)
    for name in before.outputs:
        dtype = before.value(name).type.dtype
        if dtype in tolerances:
            rtol, atol = tolerances[dtype]
            np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def check_pass(name: str, before: str, expected: str, rng: np.random.Generator, *,
               tensors: Mapping[str, np.ndarray] | None = None, dims: Mapping[str, int] | None = None,
               stats: Mapping[str, int] | None = None) -> PassResult:
    """Run pass `name` on `before`: the result prints as `expected` (no change when they are
    the same text, then stats must be empty), verifies, round-trips through text, has the
    input's numbers, and a second run changes nothing."""
    graph = parse_graph(before, tensors)
    verify(graph)
    result = PASSES[name](graph)
    verify(result.graph)
    printed = print_graph(result.graph)
    assert body(printed) == body(expected), f"\n--- got\n{body(printed)}--- expected\n{body(expected)}"
    if body(before) == body(expected):
        assert result.stats == {}, f"no change expected, stats {result.stats}"
    elif stats is not None:
        assert result.stats == dict(stats)
    assert print_graph(parse_graph(printed, graph_tensors(result.graph))) == printed
    again = PASSES[name](result.graph)
    assert again.stats == {}, f"{name} is not idempotent: {again.stats}"
    assert_same_numbers(graph, result.graph, rng, dims)
    return result


def reasons(result: PassResult) -> list[str]:
    """The rejections as `rule: %node (Op): reason` lines."""
    return [str(r) for r in result.rejections]
