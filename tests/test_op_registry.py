"""Every IR operation states every behaviour in its own class (export/ir/ops/)."""

from __future__ import annotations

import pytest
from svformer_deploy.export import ir
from svformer_deploy.export.ir import ops
from svformer_deploy.simulators.counting import WORK_OPS


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def test_the_registry_holds_every_op_class_once() -> None:
    classes = {c for c in _all_subclasses(ir.Node) if c.__module__.startswith(ops.__name__)}
    assert classes == set(ir.NODE_TYPES.values())
    assert all(name == cls.op for name, cls in ir.NODE_TYPES.items())


@pytest.mark.parametrize("name", sorted(ir.NODE_TYPES))
def test_every_op_defines_every_behaviour(name: str) -> None:
    cls = ir.NODE_TYPES[name]
    assert ops.missing_hooks(cls) == [], f"{name} lacks {ops.missing_hooks(cls)}"
    if issubclass(cls, ops.Layout):  # its four execution hooks are its one `move`
        assert cls.move is not ops.Layout.move, f"{name} lacks move"


@pytest.mark.parametrize("name", sorted(ir.NODE_TYPES))
def test_netx_lowering_is_a_chain_layer_or_a_stated_refusal(name: str) -> None:
    reason = ir.NODE_TYPES[name]().netx_refusal()
    assert reason is None or (isinstance(reason, str) and len(reason) > 10)
    if reason is None and name in ir.WEIGHTED:  # a synapse layer of a chain says how it is written as a conv
        assert callable(getattr(ir.NODE_TYPES[name], "chain_conv", None))
        assert callable(getattr(ir.NODE_TYPES[name], "chain_layout", None))


def test_counted_ops_are_the_run_record_layers() -> None:
    assert set(WORK_OPS) == {n for n, c in ir.NODE_TYPES.items() if c.counted}
    for name, cls in ir.NODE_TYPES.items():
        if not cls.counted:  # data movement only: no dense cost, no counting rule
            assert cls.cost is ops.NoArithmetic.cost and cls.count is ops.NoArithmetic.count, name


def test_no_executor_or_writer_dispatches_on_op_names() -> None:
    from svformer_deploy.export.reference import ReferenceModel
    from svformer_deploy.simulators.executor import Simulator

    old = [a for a in dir(Simulator) if a.startswith(("_f_", "_i_", "_any_"))]
    old += [a for a in dir(ReferenceModel) if a.startswith(("_float_", "_fixed_", "_any_"))]
    assert old == []


def test_every_op_runs_in_the_tiny_model_pipeline() -> None:
    """Each registered op occurs in a stage of the tiny test model, so the simulator, reference, counting and
    writer tests exercise its hooks; every hook runs on every node here."""
    import torch
    from fixtures_models import make_input, make_model
    from svformer_deploy.export.passes.quantize import QuantConfig
    from svformer_deploy.export.pipeline import run_pipeline
    from svformer_deploy.export.reference import ReferenceModel
    from svformer_deploy.export.writers import ir_to_nir, nir_to_ir, partition
    from svformer_deploy.export.writers.nir_writer import nir_names
    from svformer_deploy.simulators.counting import build_counters
    from svformer_deploy.simulators.executor import Simulator

    model = make_model("base")
    x = make_input(model, batch=1, seed=5)
    res = run_pipeline(model, quant=QuantConfig(), calibration=x)
    seen = set()
    for stage, g in res.graphs.items():
        seen |= {ir.op_of(g, n).op for n in g.nodes}
        costs = {n: ir.node_cost(g, n) for n in g.nodes}
        assert all(set(c) == {"macs", "elementwise", "params"} for c in costs.values())
        assert set(build_counters(g)) == {n for n in g.nodes if ir.op_of(g, n).counted}
        graph, names = ir_to_nir(g), nir_names(g)  # every op has a NIR form (add: fan-in edges, no node)
        assert {names[n] for n in g.nodes if ir.op_of(g, n).op != "add"} <= set(graph.nodes)
        if stage != "quantized":  # model.nir holds float graphs (no quant parameters)
            assert ir.diff_graphs(g, nir_to_ir(graph)) == []
        assert set(partition(g).host) | {n for p in partition(g).parts for n in p.nodes} == set(g.nodes)
        with torch.no_grad():
            ReferenceModel(g, dtype=torch.float64).run(x)
        Simulator(g, dtype=torch.float64).run(x[:, 0])
        if stage == "quantized":
            with torch.no_grad():
                ReferenceModel(g, mode="fixed").run(x)
            Simulator(g, mode="integer").run(x[:, 0])
    assert seen == set(ir.NODE_TYPES), f"not in the tiny model: {set(ir.NODE_TYPES) - seen}"
