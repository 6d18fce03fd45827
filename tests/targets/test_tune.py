"""Tuning on request (targets/tune.py, targets/tune_db.py, `ember tune-db`, `compile --tune`).

Fast tests: durations, the database file (round trip, which record wins, prune, a damaged file
is a warning and never a crash), keying (the same kernel in another model and on the same target
finds its record; another shape, weight layout or target does not), records applied only where
they beat the rule, and a compile that applies a record computes what the untuned one does.
The slow test runs a real search on an MLP of 64x128 matmuls within 30 s.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from click.testing import CliRunner, Result
from conftest import make_model
from onnx import helper
from tvm.runtime import vm as tvm_vm

from ember.compiler import cli_artifact, cli_tune
from ember.compiler.driver import run_passes
from ember.compiler.errors import EmberError
from ember.compiler.importer import import_proto
from ember.targets import resolve_target
from ember.targets import tune as tuning
from ember.targets.build import block_lanes, build, prepare, schedule, schedule_rules
from ember.targets.lower import to_relax
from ember.targets.tune_db import Record, TuneDB, TuneOptions, parse_duration

# Compiled f32 kernels vs numpy: summation order only.
RTOL, ATOL = 1e-4, 1e-5


def _mlp_model(rng: np.random.Generator, rows: int = 64, width: int = 128, prefix: str = "") -> onnx.ModelProto:
    """x[rows, width] -> MatMul(w1) + b1 -> Relu -> MatMul(w2); value names carry `prefix`."""
    p = prefix
    inits = {f"{p}w1": rng.standard_normal((width, width)).astype(np.float32) * 0.1,
             f"{p}w2": rng.standard_normal((width, width)).astype(np.float32) * 0.1,
             f"{p}b1": rng.standard_normal(width).astype(np.float32)}
    nodes = [helper.make_node("MatMul", [f"{p}x", f"{p}w1"], [f"{p}h"]),
             helper.make_node("Add", [f"{p}h", f"{p}b1"], [f"{p}h2"]),
             helper.make_node("Relu", [f"{p}h2"], [f"{p}h3"]),
             helper.make_node("MatMul", [f"{p}h3", f"{p}w2"], [f"{p}y"])]
    return make_model(nodes, [(f"{p}x", 1, [rows, width])], [(f"{p}y", 1, [rows, width])], inits)


def _graph(model: onnx.ModelProto):
    graph, _, _ = run_passes(import_proto(model), None, {})
    return graph


def _prepared(model: onnx.ModelProto) -> tuple[tvm.IRModule, tvm.IRModule, dict[str, str], tvm.target.Target]:
    """(unscheduled, rule-scheduled, {kernel: rule}, target) for a model, as build() makes them."""
    spec = resolve_target("cpu")
    target = tvm.target.Target(spec.tvm_target())
    mod = prepare(to_relax(_graph(model)), target)
    unscheduled = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    scheduled, applied = schedule(mod, target, schedule_rules(spec))
    return unscheduled, scheduled, applied, target


def _kernels(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def _run(built, x: np.ndarray) -> np.ndarray:
    vm = tvm_vm.VirtualMachine(built.executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    w = {i.name[-2:]: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return np.maximum(x @ w["w1"] + w["b1"], 0) @ w["w2"]


def _record(workload: str = "00ff", target: str = '{"kind":"llvm","mcpu":"znver4","num-cores":2}', *,
            rule_s: float | None = 2e-3, tuned_s: float = 1e-3, date: str | None = None, trace: object = (),
            func: str = "", kernel: str = "fused_matmul", rule_hash: str = "") -> Record:
    date = date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Record(workload=workload, target=target, kernel=kernel, rule="ember.Matmul", rule_s=rule_s,
                  tuned_s=tuned_s, trials=64, threads=2, date=date, trace=list(trace), func=func, rule_hash=rule_hash)


def _hand_schedule(func: tvm.tirx.PrimFunc) -> list:
    """A valid schedule trace for a matmul kernel, made by hand (no search): split the
    output's column loop by 16, vectorize it, parallelize the rows."""
    func = tuning.workload_func(tvm.ir.load_json(tvm.ir.save_json(func)))
    sch = tvm.s_tir.Schedule(func)
    block = next(b for b in sch.get_child_blocks(sch.get_sblock("root")) if "matmul" in sch.get(b).name_hint)
    i, j, k = sch.get_loops(block)
    jo, ji = sch.split(j, [None, 16])
    sch.reorder(i, jo, k, ji)
    sch.parallel(i)
    return tuning._plain(sch.trace.as_json())


# --- durations ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("30d", 30 * 86400),
                                               ("45", 45), ("1.5m", 90), (" 2H ", 7200)])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "ten minutes", "10x", "-5m", "0s", "nan", "inf"])
def test_bad_durations_are_one_clear_error(text: str) -> None:
    with pytest.raises(EmberError, match="is not a duration; give a positive number with s, m, h or d"):
        parse_duration(text)


# --- the database file -------------------------------------------------------------------------

def test_database_round_trips_and_keeps_the_record_with_the_better_speedup(tmp_path: Path) -> None:
    db = TuneDB.load(tmp_path / "sub" / "db.json")
    assert db.records == {}
    assert db.put(_record(rule_s=2e-3, tuned_s=1e-3))  # 2x
    assert not db.put(_record(rule_s=1e-3, tuned_s=0.9e-3))  # 1.1x: faster in raw time, worse speedup
    assert db.put(_record(rule_s=3e-3, tuned_s=1e-3))  # 3x
    assert db.put(_record(rule_s=1e-3, tuned_s=0.9e-3, rule_hash="ab"))  # timed against a newer rule: replaces
    assert db.put(_record(rule_s=3e-3, tuned_s=1e-3, rule_hash="ab"))
    db.put(_record(workload="11aa", tuned_s=5e-3))  # slower than its rule: kept, never applied
    db.save()
    again = TuneDB.load(tmp_path / "sub" / "db.json")
    assert {k: (r.rule_s, r.tuned_s) for k, r in again.records.items()} == {k: (r.rule_s, r.tuned_s) for k, r in db.records.items()}
    best = again.lookup("00ff", _record().target)
    assert best.speedup == pytest.approx(3.0) and best.faster
    assert not again.lookup("11aa", _record().target).faster
    assert again.lookup("00ff", '{"kind":"llvm","mcpu":"znver4","num-cores":4}') is None


def test_a_record_is_used_only_where_it_beats_the_rule_by_the_margin() -> None:
    """A gain under RECORD_MARGIN, measured on the kernel alone, is within a model's noise."""
    from ember.targets.tune_db import RECORD_MARGIN

    assert _record(rule_s=1e-3, tuned_s=(1 - RECORD_MARGIN / 2) * 1e-3).faster is False
    assert _record(rule_s=1e-3, tuned_s=(1 - 2 * RECORD_MARGIN) * 1e-3).faster is True
    assert _record(rule_s=None, tuned_s=1e-3).faster is True  # (no rule's code to beat)
    inside = _record(rule_s=2e-3, tuned_s=1e-3)
    inside.in_model = 1 - RECORD_MARGIN / 2  # (2x alone, but the model no faster with it)
    assert inside.faster is False


def test_saving_with_merge_keeps_what_another_run_wrote(tmp_path: Path) -> None:
    path = tmp_path / "db.json"
    mine, theirs = TuneDB.load(path), TuneDB.load(path)
    theirs.put(_record("c1"))
    theirs.save(merge=True)
    mine.put(_record("c2"))
    mine.save(merge=True)
    assert sorted(k[0] for k in TuneDB.load(path).records) == ["c1", "c2"]


def test_prune_by_target_age_and_slower(tmp_path: Path) -> None:
    now = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
    old = (now - datetime.timedelta(days=40)).isoformat()
    other = '{"kind":"llvm","mcpu":"cortex-a72","num-cores":4}'
    db = TuneDB(tmp_path / "db.json")
    for rec in (_record("a1", date=old), _record("a2", tuned_s=3e-3, date=now.isoformat()),
                _record("a3", date=now.isoformat()), _record("a4", target=other, date=old)):
        db.put(rec)
    assert [r.workload for r in db.prune(slower=True, now=now)] == ["a2"]
    assert sorted(r.workload for r in db.prune(older_than_s=30 * 86400, target="znver4", now=now)) == ["a1"]
    assert sorted(r.workload for r in db.prune(target="cortex-a72", now=now)) == ["a4"]
    assert list(db.records) == [("a3", _record().target)]


@pytest.mark.parametrize("content", ["", "{not json", '{"format": "something else"}', "[1, 2]",
                                     '{"format": "ember-tune-db", "version": 1, "records": [{"workload": 1}]}',
                                     '{"format": "ember-tune-db", "version": 99, "records": []}'])
def test_damaged_database_is_a_warning_and_is_ignored(tmp_path: Path, content: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "db.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="ember.targets.tune_db"):
        db = TuneDB.load(path)
    assert db.records == {}
    assert len(caplog.records) == 1 and f"tuning database {path} is damaged" in caplog.records[0].getMessage()
    db.put(_record())
    db.save()  # the damaged file is kept aside, not silently lost
    assert (tmp_path / "db.json.damaged").read_text() == content
    assert len(TuneDB.load(path).records) == 1


# --- keys and reuse ------------------------------------------------------------------------------

def test_same_kernel_in_another_model_has_the_same_key_and_other_shapes_do_not(rng: np.random.Generator) -> None:
    first, _, _, target = _prepared(_mlp_model(rng))
    renamed, _, _, _ = _prepared(_mlp_model(rng, prefix="other_"))  # other value names, other weights
    wider, _, _, _ = _prepared(_mlp_model(rng, width=96))
    keys = {name: tuning.workload_key(f) for name, f in _kernels(first).items()}
    assert keys == {name: tuning.workload_key(f) for name, f in _kernels(renamed).items()}
    assert not set(keys.values()) & {tuning.workload_key(f) for f in _kernels(wider).values()}
    # The weight's layout_free mark is part of the key: a kernel whose B is not a constant differs.
    func = _kernels(first)["fused_matmul"]
    assert tuning.workload_key(func.without_attr("layout_free_buffers")) != keys["fused_matmul"]
    # The target key is canonical JSON with the CPU, its features and its cores.
    tkey = json.loads(tuning.target_key(target))
    assert tkey["mcpu"] and tkey["num-cores"] >= 1 and tkey["mattr"]


def _store_hand_record(db_path: Path, model: onnx.ModelProto, *, faster: bool, target: tvm.target.Target | None = None,
                       stale_rule: bool = False) -> str:
    unscheduled, scheduled, _, host = _prepared(model)
    func = _kernels(unscheduled)["fused_matmul"]
    rule_hash = "0123456789abcdef" if stale_rule else tuning.workload_key(scheduled["fused_matmul"])
    db = TuneDB.load(db_path)
    db.put(_record(tuning.workload_key(func), tuning.target_key(target or host), rule_s=2e-3 if faster else 1e-3,
                   tuned_s=1e-3 if faster else 2e-3, trace=_hand_schedule(func),
                   func=tvm.ir.save_json(tuning.workload_func(func)), rule_hash=rule_hash))
    db.save()
    return "fused_matmul"


def test_records_apply_only_where_faster_than_the_rule_and_only_on_their_target(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _mlp_model(rng)
    unscheduled, scheduled, applied, target = _prepared(model)
    kernel = _store_hand_record(tmp_path / "fast.json", model, faster=True)
    start = time.perf_counter()
    mod, got = tuning.apply_records(unscheduled, scheduled, applied, target, tmp_path / "fast.json")
    assert time.perf_counter() - start < 2.0  # replay, no search
    assert got[kernel] == tuning.TUNED and all(got[k] == applied.get(k) for k in got if k != kernel)
    assert "T.parallel" in mod[kernel].script()

    _store_hand_record(tmp_path / "slow.json", model, faster=False)
    _, got = tuning.apply_records(*_prepared(model)[:3], target, tmp_path / "slow.json")
    assert tuning.TUNED not in got.values()

    # Timed against another version of the rule (ember's rules changed since): not used.
    _store_hand_record(tmp_path / "stale.json", model, faster=True, stale_rule=True)
    _, got = tuning.apply_records(*_prepared(model)[:3], target, tmp_path / "stale.json")
    assert tuning.TUNED not in got.values()

    other = tvm.target.Target({**target.export(), "num-cores": 64})
    _store_hand_record(tmp_path / "other.json", model, faster=True, target=other)
    _, got = tuning.apply_records(*_prepared(model)[:3], target, tmp_path / "other.json")
    assert tuning.TUNED not in got.values()


def test_records_are_checked_in_the_model_and_unused_where_it_ran_no_faster(tmp_path: Path, rng: np.random.Generator,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """After a search, the model is timed with the run's new records and without them; each new
    record keeps the ratio, and is used only where the model ran faster by the margin."""
    model = _mlp_model(rng)
    unscheduled, scheduled, applied, target = _prepared(model)
    _store_hand_record(tmp_path / "db.json", model, faster=True)
    timed: list[int] = []
    for ratio, used in ((1.2, False), (0.99, False), (0.8, True)):
        db = TuneDB.load(tmp_path / "db.json")
        monkeypatch.setattr(tuning, "_time_models", lambda mods, *_, r=ratio: timed.append(len(mods)) or [1.0, r])
        tuning._check_in_model(unscheduled, scheduled, applied, target, db, {}, time.perf_counter() + 10)
        record, = db.records.values()
        assert record.in_model == ratio and record.faster is used
        _, got = tuning.apply_records(*_prepared(model)[:3], target, db)
        assert (got["fused_matmul"] == tuning.TUNED) is used
    assert timed == [2, 2, 2]
    # Records the database held before the run are not re-judged, and none new: no timing.
    db = TuneDB.load(tmp_path / "db.json")
    tuning._check_in_model(unscheduled, scheduled, applied, target, db, dict(db.records), time.perf_counter() + 10)
    assert timed == [2, 2, 2]


def test_models_are_timed_on_made_up_inputs_where_their_sizes_are_static(rng: np.random.Generator) -> None:
    _, scheduled, _, target = _prepared(_mlp_model(rng))
    with target:
        times = tuning._time_models([scheduled, scheduled], target, time.perf_counter() + 5)
    assert times is not None and len(times) == 2 and all(0 < t < 1 for t in times)
    dynamic = _mlp_model(rng)
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert tuning._model_inputs(_prepared(dynamic)[0]) is None


def test_record_that_does_not_replay_leaves_the_rule_schedule(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _mlp_model(rng)
    unscheduled, scheduled, applied, target = _prepared(model)
    func = _kernels(unscheduled)["fused_matmul"]
    db = TuneDB(tmp_path / "db.json")
    db.put(_record(tuning.workload_key(func), tuning.target_key(target), trace=[[["GetSBlock", [], ["nope"]]], []],
                   func=tvm.ir.save_json(tuning.workload_func(func)),
                   rule_hash=tuning.workload_key(scheduled["fused_matmul"])))
    db.save()
    _, got = tuning.apply_records(unscheduled, scheduled, applied, target, db.path)
    assert got == applied


def test_a_compile_that_reuses_a_record_computes_what_the_untuned_one_does(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _mlp_model(rng)
    _store_hand_record(tmp_path / "db.json", model, faster=True)
    spec = resolve_target("cpu")
    graph = _graph(model)
    tuned = build(graph, spec, tune=TuneOptions(db_path=tmp_path / "db.json"))
    plain = build(graph, spec, tune=TuneOptions(db_path=tmp_path / "none.json"))
    assert tuning.TUNED in tuned.rules.values() and tuning.TUNED not in plain.rules.values()
    x = rng.standard_normal((64, 128)).astype(np.float32)
    np.testing.assert_allclose(_run(tuned, x), _reference(model, x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_run(tuned, x), _run(plain, x), rtol=RTOL, atol=ATOL)


# --- the command line --------------------------------------------------------------------------

def _one_line_error(result: Result, text: str) -> None:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0, result.output
    assert len(errors) == 1 and text in errors[0], result.output
    assert "Traceback" not in result.output


def _invoke(command, *args: object) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args])


def test_compile_rejects_a_bad_tune_budget_and_an_unwritable_database(tmp_path: Path, rng: np.random.Generator) -> None:
    onnx.save(_mlp_model(rng), tmp_path / "mlp.onnx")
    _one_line_error(_invoke(cli_artifact.compile, tmp_path / "mlp.onnx", "--tune", "ten minutes"), "--tune 'ten minutes' is not a duration")
    (tmp_path / "a_file").write_text("")
    result = _invoke(cli_artifact.compile, tmp_path / "mlp.onnx", "--tune", "10s", "--tune-db", tmp_path / "a_file" / "db.json")
    _one_line_error(result, f"cannot write the tuning database {tmp_path / 'a_file' / 'db.json'}")
    assert not (tmp_path / "mlp.ember").exists()


def test_tune_db_list_and_prune(tmp_path: Path) -> None:
    path = tmp_path / "db.json"
    db = TuneDB(path)
    db.put(_record("b1", rule_s=2e-3, tuned_s=1e-3))
    db.put(_record("b2", rule_s=1e-3, tuned_s=2e-3, kernel="fused_conv2d"))
    db.save()
    listed = _invoke(cli_tune.tune_db, "list", "--db", path)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0] == f"{path}: 2 records"
    assert any("fused_matmul" in line and "znver4, 2 cores" in line and "2.00x" in line and " yes " in line for line in lines)
    assert any("fused_conv2d" in line and "0.50x" in line and " no " in line for line in lines)
    pruned = _invoke(cli_tune.tune_db, "prune", "--db", path, "--slower")
    assert pruned.exit_code == 0 and "removed 1 records" in pruned.output and "(1 left)" in pruned.output
    assert [r.workload for r in TuneDB.load(path).records.values()] == ["b1"]
    _one_line_error(_invoke(cli_tune.tune_db, "prune", "--db", path), "give --target, --older-than or --slower")
    _one_line_error(_invoke(cli_tune.tune_db, "prune", "--db", path, "--older-than", "soon"), "--older-than 'soon' is not a duration")
    _one_line_error(_invoke(cli_tune.tune_db, "prune", "--db", tmp_path / "missing.json", "--slower"), "no tuning database there")
    path.write_text("{broken")
    damaged = _invoke(cli_tune.tune_db, "list", "--db", path)
    assert damaged.exit_code == 0 and "0 records" in damaged.output


# --- a real search -----------------------------------------------------------------------------

@pytest.mark.slow
def test_tuning_an_mlp_keeps_its_results_and_the_records_are_reused(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _mlp_model(rng)
    graph = _graph(model)
    spec = resolve_target("cpu")
    db_path = tmp_path / "db.json"
    start = time.perf_counter()
    tuned = build(graph, spec, tune=TuneOptions(budget_s=30, db_path=db_path, progress=False))
    assert time.perf_counter() - start < 30 + 20  # budget, plus the build around it
    plain = build(graph, spec, tune=TuneOptions(db_path=tmp_path / "empty.json"))
    x = rng.standard_normal((64, 128)).astype(np.float32)
    np.testing.assert_allclose(_run(tuned, x), _reference(model, x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_run(tuned, x), _run(plain, x), rtol=RTOL, atol=ATOL)

    # MetaSchedule's weight re-layouts (RewriteLayout) were folded into constants like the rules'.
    assert not [gv for gv, f in tuned.module.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and "layout_rewrite_preproc" in f.script()]

    records = list(TuneDB.load(db_path).records.values())
    assert records and all(r.rule_s and r.tuned_s > 0 and r.trials > 0 for r in records)
    used = {r.kernel for r in records if r.faster}
    assert {k for k, rule in tuned.rules.items() if rule == tuning.TUNED} <= {f"{k}" for k in used} | set(tuned.rules)

    # A later compile of the same kernels (another model's names) reuses them without a search.
    other = _mlp_model(rng, prefix="m2_")
    start = time.perf_counter()
    again = build(_graph(other), spec, tune=TuneOptions(db_path=db_path))
    assert time.perf_counter() - start < 20
    assert sorted(k for k, r in again.rules.items() if r == tuning.TUNED) == sorted(used)
    np.testing.assert_allclose(_run(again, x), _reference(other, x), rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_compile_with_tune_writes_a_checked_artifact_and_lists_its_records(tmp_path: Path, rng: np.random.Generator) -> None:
    onnx.save(_mlp_model(rng), tmp_path / "mlp.onnx")
    db = tmp_path / "shared" / "tune.json"
    result = _invoke(cli_artifact.compile, tmp_path / "mlp.onnx", "-o", tmp_path / "mlp.ember", "--tune", "20s", "--tune-db", db)
    assert result.exit_code == 0, result.output
    assert "tuning (" in result.output and "y: max abs error" in result.output  # progress label, checked outputs
    listed = _invoke(cli_tune.tune_db, "list", "--db", db)
    assert listed.exit_code == 0 and listed.output.splitlines()[0] != f"{db}: 0 records", listed.output


# --- the rules' knobs ----------------------------------------------------------------------------

def _knob_record(model: onnx.ModelProto, kernel: str, knobs: dict[str, int], path: Path) -> None:
    unscheduled, scheduled, _, target = _prepared(model)
    func = _kernels(unscheduled)[kernel]
    db = TuneDB(path)
    db.put(Record(workload=tuning.workload_key(func), target=tuning.target_key(target), kernel=kernel, rule="Matmul",
                  rule_s=2e-3, tuned_s=1e-3, trials=8, threads=2, date="2026-12-05T00:00:00+00:00", trace=None,
                  func=tvm.ir.save_json(tuning.workload_func(func)), rule_hash=tuning.workload_key(scheduled[kernel]),
                  knobs=knobs))
    db.save()


def test_a_knob_record_schedules_the_kernel_with_its_rule_and_computes_the_same(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _mlp_model(rng)
    unscheduled, scheduled, applied, target = _prepared(model)
    assert applied["fused_matmul"] == "Matmul"
    _knob_record(model, "fused_matmul", {"mr": 2, "nv": 1, "serial": 0}, tmp_path / "db.json")
    default = scheduled["fused_matmul"].script()
    mod, got = tuning.apply_records(unscheduled, scheduled, applied, target, tmp_path / "db.json")
    assert got["fused_matmul"] == tuning.TUNED
    text = mod["fused_matmul"].script()
    # a 2 MFLOP kernel runs serial by default; the record makes it parallel, with another tile
    assert text != default and "T.parallel" not in default and "T.parallel" in text
    assert "ember.knobs" not in text

    spec = resolve_target("cpu")
    tuned = build(_graph(model), spec, tune=TuneOptions(db_path=tmp_path / "db.json"))
    x = rng.standard_normal((64, 128)).astype(np.float32)
    np.testing.assert_allclose(_run(tuned, x), _reference(model, x), rtol=RTOL, atol=ATOL)
    listed = _invoke(cli_tune.tune_db, "list", "--db", tmp_path / "db.json")
    assert "knobs mr=2,nv=1,serial=0" in listed.output, listed.output


def test_knob_values_the_rule_cannot_take_leave_the_rule_schedule(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _mlp_model(rng)
    unscheduled, scheduled, applied, target = _prepared(model)
    for knobs in ({"nv": 5}, {"mr": 0}, {"mr": 8, "nv": 4}, {"group": 3}):  # 5 vectors: 128 columns are 8
        _knob_record(model, "fused_matmul", knobs, tmp_path / "db.json")
        _, got = tuning.apply_records(unscheduled, scheduled, applied, target, tmp_path / "db.json")
        assert got == applied, knobs


def _knob_model(rng: np.random.Generator) -> onnx.ModelProto:
    """A blocked conv -> depthwise conv -> max pool -> Gemm chain: one kernel per schedule rule
    with knobs (ConvNCHWc, WindowNCHWc twice, Matmul), odd sizes."""
    inits = {"w1": (rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32),
             "b1": rng.standard_normal(32).astype(np.float32),
             "w2": (rng.standard_normal((32, 1, 3, 3)) * 0.3).astype(np.float32),
             "w3": (rng.standard_normal((40, 32 * 7 * 7)) * 0.05).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=32),
             helper.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    return make_model(nodes, [("x", 1, [3, 16, 14, 14])], [("y", 1, [3, 40])], inits)


def _run_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target, args: list[np.ndarray]) -> list[np.ndarray]:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    tensors = [tvm.runtime.tensor(a.copy()) for a in args]
    lib["main"](*tensors)
    return [t.numpy() for t in tensors]


def test_every_knob_value_a_rule_takes_computes_what_its_default_does(rng: np.random.Generator) -> None:
    """The knob search may pick any value a rule accepts, so each must be a correct schedule:
    every kernel with knobs, scheduled with each value of each knob, on random arguments."""
    from ember.targets.build import schedule_with
    from ember.targets.sched_common import buffer_shape

    spec = resolve_target("cpu")
    target = tvm.target.Target(spec.tvm_target())
    mod = prepare(to_relax(_graph(_knob_model(rng)), block_lanes(spec)), target)
    unscheduled = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    _, applied = schedule(mod, target, schedule_rules(spec))
    rules = {type(r).__name__: r for r in schedule_rules(spec)}
    assert {"ConvNCHWc", "WindowNCHWc", "Matmul"} <= set(applied.values()), applied
    tried = 0
    for name, func in _kernels(unscheduled).items():
        rule = rules.get(applied.get(name, ""))
        space = tuning.knob_space(rule, func, target) if rule is not None else {}
        if not space:
            continue
        args = [rng.standard_normal(buffer_shape(p)).astype(str(p.ty.dtype)) for p in func.params]
        with target:
            want = _run_kernel(schedule_with(rule, func, target), target, args)
            for knob, values in space.items():
                for value in values:
                    scheduled = schedule_with(rule, func, target, {knob: value})
                    if scheduled is None:
                        continue
                    tried += 1
                    for got, expected in zip(_run_kernel(scheduled, target, args), want):
                        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=f"{name} {knob}={value}")
    assert tried >= 20, tried
