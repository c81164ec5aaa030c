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


@pytest.mark.parametrize("name", sorted(ir.NODE_TYPES))
def test_netx_lowering_is_a_chain_layer_or_a_stated_refusal(name: str) -> None:
    reason = ir.NODE_TYPES[name]().netx_refusal()
    assert reason is None or (isinstance(reason, str) and len(reason) > 10)


def test_counted_ops_are_the_run_record_layers() -> None:
    assert set(WORK_OPS) == {n for n, c in ir.NODE_TYPES.items() if c.counted}
    for name, cls in ir.NODE_TYPES.items():
        if not cls.counted:  # data movement only: no dense cost, no counting rule
            assert cls.cost is ops.NoArithmetic.cost and cls.count is ops.NoArithmetic.count, name
