"""The export IR: one typed graph of an SVFormer network, its schema and its (de)serialisation.

A graph is a :class:`networkx.DiGraph`. Every node is one operation and produces exactly one
tensor; every edge carries that tensor to one input port of a consumer.

Node attributes (``G.nodes[name]``; the node key is the PyTorch module path, e.g.
``blocks3.1.attn.q_lif``, or a derived name such as ``blocks1.0.add1`` for ops without a module):

- ``op``: one of the frozen dataclasses below (the operation and its numpy parameters);
- ``shape``, ``kind``, ``rate``: the output tensor (see :class:`TensorSpec`);
- ``origin``: list of PyTorch module paths this node implements (several after folding/fusion);
- ``stage``: the part of the network the node belongs to (``PE<i>``, ``S<i>``, ``LP``, ``CH``), set by
  the tracer and kept by the passes (a fused node keeps the stage of its parts);
- ``quant`` (optional, after the ``quantize`` pass): ``dict[str, np.ndarray]`` of integer
  parameters; keys per op are specified in :mod:`export.passes.quantize`.

Edge attributes (``G.edges[src, dst]``): ``port`` (input index at ``dst``), ``shape``, ``kind``
and ``rate`` (copies of the source's output spec). A source feeds a consumer at most once.

Tensor conventions: shapes are **per time step and without the batch axis**: images
``[C, H, W]``, tokens ``[N, C]`` (``N = H·W``, token ``n = y·W + x``), attention heads
``[h, N, d]``. ``kind`` is ``"spike"`` (binary {0, 1}) or ``"real"``. ``rate`` is ``"step"`` (one
tensor per time step, t = 0..T-1) or ``"clip"`` (one tensor per clip, emitted after step T-1).
Every op except :class:`Conv3dHead` maps step-rate inputs to step-rate outputs; neurons carry
their membrane across steps. Graph attributes: ``ir_version``, ``time_steps`` (T), ``config``
(the ``SVFormerConfig`` dict), ``passes`` (names of the passes applied, in order) and free-form
JSON metadata.

Files (:func:`save` / :func:`load`): ``<name>.json`` (structure, attributes, scalars) plus
``<name>.npz`` (every array; read with ``allow_pickle=False``); no pickle anywhere. The JSON
records the npz's SHA-256 so a mismatched pair is refused. The full reference is ``docs/ir.md``.

Modules: :mod:`.tensor` (kinds, rates, specs), :mod:`.ops` (the operations), :mod:`.graph`
(building and walking), :mod:`.validate`, :mod:`.cost` (dense work), :mod:`.serialize` (files).
"""
from __future__ import annotations

from .cost import graph_costs, node_cost
from .graph import (
                    add_op,
                    bypass,
                    consumers,
                    copy_graph,
                    input_node,
                    inputs_of,
                    iter_ops,
                    legacy_stage,
                    neuron_names,
                    new_graph,
                    op_of,
                    output_node,
                    rename,
                    replace_op,
                    spec,
                    stage_of,
                    topo_order,
)
from .ops import (
                    LAYOUT,
                    NODE_TYPES,
                    WEIGHTED,
                    Add,
                    Affine,
                    BatchNorm,
                    Concat,
                    Conv2d,
                    Conv3dHead,
                    Flatten,
                    Input,
                    Linear,
                    MergeHeads,
                    Neuron,
                    Node,
                    Output,
                    SpikeMatmulKV,
                    SpikeMatmulQKV,
                    SplitHeads,
                    ToImage,
                    ToTokens,
)
from .serialize import from_json_and_arrays, json_attributes, json_value, load, npz_path_for, save, to_json_and_arrays
from .tensor import CLIP, FORMAT, IR_VERSION, REAL, SPIKE, STEP, IRError, Shape, TensorSpec
from .validate import diff_graphs, validate

__all__ = [
    "IR_VERSION", "FORMAT", "Shape",
    "SPIKE", "REAL", "STEP", "CLIP", "IRError", "TensorSpec", "Node", "NODE_TYPES", "WEIGHTED", "LAYOUT",
    "Input", "Output", "Conv2d", "Linear", "BatchNorm", "Affine", "Neuron", "SplitHeads", "MergeHeads",
    "SpikeMatmulKV", "SpikeMatmulQKV", "ToTokens", "ToImage", "Add", "Concat", "Conv3dHead", "Flatten",
    "new_graph", "add_op", "spec", "op_of", "inputs_of", "consumers", "topo_order", "iter_ops", "input_node",
    "output_node", "neuron_names",
    "stage_of", "legacy_stage", "copy_graph", "replace_op", "bypass", "rename", "validate", "diff_graphs",
    "node_cost", "graph_costs", "save", "load", "to_json_and_arrays", "from_json_and_arrays", "npz_path_for",
    "json_value", "json_attributes",
]
