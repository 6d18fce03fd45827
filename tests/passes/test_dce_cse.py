"""dce and cse: Before/Expected pairs and what they must keep."""

from __future__ import annotations

import numpy as np
from passcheck import check_pass


def test_dce_removes_unread_nodes_and_constants(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  const %c: f32[4] = [1.0, 2.0, 3.0, 4.0]
  const %keep: f32[] = 2.0
  %dead: f32[4] = Add(%x, %c)
  %deader: f32[4] = Relu(%dead)
  %y: f32[4] = Mul(%x, %keep)
  return %y
}
"""
    expected = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  const %keep: f32[] = 2.0
  %y: f32[4] = Mul(%x, %keep)
  return %y
}
"""
    assert check_pass("dce", before, expected, rng).stats == {"nodes_removed": 2, "consts_removed": 1}


def test_dce_keeps_multi_output_nodes_with_one_output_read(rng: np.random.Generator) -> None:
    text = """graph main(%x: f32[6]) -> (%b: f32[3]) {
  const %sizes: i64[2] = [3, 3]
  %a: f32[3], %b: f32[3] = Split(%x, %sizes)
  return %b
}
"""
    check_pass("dce", text, text, rng)


def test_cse_merges_duplicate_nodes_and_constants(rng: np.random.Generator) -> None:
    before = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  const %one: f32[] = 1.0
  const %uno: f32[] = 1.0
  %a: f32[4] = Add(%x, %one)
  %b: f32[4] = Add(%x, %uno)
  %c: f32[4] = Relu(%a)
  %d: f32[4] = Relu(%b)
  %y: f32[4] = Mul(%c, %d)
  return %y
}
"""
    expected = """graph main(%x: f32[4]) -> (%y: f32[4]) {
  const %one: f32[] = 1.0
  %a: f32[4] = Add(%x, %one)
  %c: f32[4] = Relu(%a)
  %y: f32[4] = Mul(%c, %c)
  return %y
}
"""
    assert check_pass("cse", before, expected, rng).stats == {"consts_merged": 1, "nodes_merged": 2}


def test_cse_keeps_graph_outputs_and_different_attributes(rng: np.random.Generator) -> None:
    text = """graph main(%x: f32[2,3]) -> (%a: f32[2,3], %b: f32[2,3], %c: f32[3,2], %d: f32[2,3]) {
  %a: f32[2,3] = Relu(%x)
  %b: f32[2,3] = Relu(%x)
  %c: f32[3,2] = Transpose(%x)
  %d: f32[2,3] = Transpose(%x) {perm=[0,1]}
  return %a, %b, %c, %d
}
"""
    check_pass("cse", text, text, rng)


def test_cse_merges_nodes_whose_run_time_dims_differ_only_in_name(rng: np.random.Generator) -> None:
    """Two NonZero of one mask (`a[mask]`, `b[mask]` as exporters write them): their counts are
    named after each node; merging the second renames its count in what follows, so the
    Transposes merge too, and the Add of the two gathers types as one count."""
    before = """graph main(%x: f32[6], %y: f32[6]) -> (%s: f32[nz_1]) {
  %nz: i64[1,nz_1] = NonZero(%x)
  %nz2: i64[1,nz2_1] = NonZero(%x)
  %ta: i64[nz_1,1] = Transpose(%nz) {perm=[1,0]}
  %tb: i64[nz2_1,1] = Transpose(%nz2) {perm=[1,0]}
  %ga: f32[nz_1] = GatherND(%x, %ta)
  %gb: f32[nz2_1] = GatherND(%y, %tb)
  %s: f32[nz_1] = Add(%ga, %gb)
  return %s
}
"""
    expected = """graph main(%x: f32[6], %y: f32[6]) -> (%s: f32[nz_1]) {
  %nz: i64[1,nz_1] = NonZero(%x)
  %ta: i64[nz_1,1] = Transpose(%nz) {perm=[1,0]}
  %ga: f32[nz_1] = GatherND(%x, %ta)
  %gb: f32[nz_1] = GatherND(%y, %ta)
  %s: f32[nz_1] = Add(%ga, %gb)
  return %s
}
"""
    assert check_pass("cse", before, expected, rng).stats == {"nodes_merged": 2}
