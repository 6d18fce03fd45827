"""The numpy reference interpreter: ember's semantic ground truth.

Runs a graph node by node with each op's `ref`. Constant folding calls it; tests compare
passes, importer and compiled artifacts against it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ember.compiler import dtypes
from ember.compiler.errors import EvalError
from ember.compiler.ir import Graph, node_uses


def check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate run-time inputs against the graph's input types; a clear EvalError if wrong.

    Symbolic dims bind on first use and must agree across inputs (two inputs `N` share N).
    """
    expected = [v.name for v in graph.inputs]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if extra:
            parts.append(f"unknown input(s) {extra}")
        raise EvalError(f"{'; '.join(parts)}; the graph takes {expected}")
    bound: dict[str, int] = {}
    out: dict[str, np.ndarray] = {}
    for value in graph.inputs:
        array = np.asarray(feeds[value.name])
        want = value.type
        if array.dtype != want.np_dtype:
            got = dtypes.from_numpy(array.dtype) if array.dtype in dtypes.NUMPY.values() else str(array.dtype)
            raise EvalError(f"input {value.name!r} must be {want.dtype}, got {got}")
        if array.ndim != want.rank or any(
            isinstance(d, int) and d != s for d, s in zip(want.shape, array.shape)
        ):
            raise EvalError(f"input {value.name!r} must have shape {want}, got {list(array.shape)}")
        for d, s in zip(want.shape, array.shape):
            if isinstance(d, str) and bound.setdefault(d, s) != s:
                raise EvalError(f"input {value.name!r}: dim {d} is {s} here but {bound[d]} in another input")
        out[value.name] = array
    return out


def run(
    graph: Graph,
    feeds: Mapping[str, np.ndarray],
    *,
    keep_all: bool = False,
    outer: Mapping[str, np.ndarray] | None = None,
    check: bool = True,
) -> dict[str, np.ndarray]:
    """Run `graph` on `feeds`; the outputs by name (every value when `keep_all`)."""
    from ember.compiler.ops import OPS, EvalCtx

    env: dict[str, np.ndarray] = dict(outer or {})
    env.update(check_feeds(graph, feeds) if check else {k: np.asarray(v) for k, v in feeds.items()})
    env.update((c.name, c.data) for c in graph.consts)
    last_use = _last_uses(graph) if not keep_all else {}
    for index, node in enumerate(graph.nodes):
        opdef = OPS.get(node.op)
        if opdef is None:
            raise EvalError(f"node {node.name!r}: no reference for operator {node.op}")
        try:
            inputs = [env[n] if n else None for n in node.inputs]
        except KeyError as err:
            raise EvalError(f"node {node.name!r} ({node.op}) reads undefined value {err.args[0]!r}") from None

        def run_sub(sub: Graph, sub_feeds: Mapping[str, np.ndarray], _env: dict = env) -> list[np.ndarray]:
            result = run(sub, sub_feeds, outer=_env, check=False, keep_all=True)
            return [result[n] for n in sub.outputs]

        try:
            results = opdef.ref(inputs, node.attrs, EvalCtx(node=node, run_graph=run_sub))
        except EvalError:
            raise
        except Exception as err:
            shapes = ", ".join(f"{a.dtype}{list(a.shape)}" if a is not None else "_" for a in inputs)
            raise EvalError(f"node {node.name!r} ({node.op}) failed on inputs ({shapes}): {err}") from err
        for value, result in zip(node.outputs, results):
            env[value.name] = np.asarray(result)
        for name in last_use.get(index, ()):
            env.pop(name, None)
    if keep_all:
        return env
    return {name: env[name] for name in graph.outputs}


def _last_uses(graph: Graph) -> dict[int, list[str]]:
    """For each node index, the values whose last reader it is (freed after it runs)."""
    keep = set(graph.outputs)
    last: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node_uses(node):
            if name:
                last[name] = index
    by_node: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in keep:
            by_node.setdefault(index, []).append(name)
    return by_node


def bind_dims(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Values of the symbolic input dims for these feeds."""
    bound: dict[str, int] = {}
    for value in graph.inputs:
        for d, s in zip(value.type.shape, np.asarray(feeds[value.name]).shape):
            if isinstance(d, str):
                bound[d] = int(s)
    return bound


def random_feeds(graph: Graph, rng: np.random.Generator, dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for a graph: normal floats, small non-negative ints, random bools.

    Symbolic dims take values from `dims` (default 1).
    """
    feeds: dict[str, np.ndarray] = {}
    for value in graph.inputs:
        shape = tuple(d if isinstance(d, int) else int((dims or {}).get(d, 1)) for d in value.type.shape)
        kind = value.type.np_dtype
        if value.type.dtype == "bool":
            feeds[value.name] = rng.random(shape) < 0.5
        elif value.type.dtype in dtypes.INTS:
            feeds[value.name] = rng.integers(0, 10, size=shape).astype(kind)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(kind)
    return feeds


def sample_feeds(graph: Graph, seed: int = 0, dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Deterministic inputs that are valid for most models (symbolic dims from `dims`, else 1).

    Floats are random normal; integer and bool inputs are all ones, because integers are
    usually indices (token ids, segment ids, masks) and 1 is valid for nearly every table,
    where random values would index past small tables.
    """
    feeds = random_feeds(graph, np.random.default_rng(seed), dims)
    for value in graph.inputs:
        if value.type.dtype not in dtypes.FLOATS:
            feeds[value.name] = np.ones_like(feeds[value.name])
    return feeds
