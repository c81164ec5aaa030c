"""Graph passes, each a pure function IR -> IR with a fidelity check beside it.

- :mod:`export.passes.fold_bn`: ``fold_bn(g)``, ``check(before, after, inputs)``
- :mod:`export.passes.fuse_linear`: ``fuse_linear(g)``, ``fusion_report``, ``check``
- :mod:`export.passes.quantize`: ``quantize(g, calibration, QuantConfig())``, ``check`` (and the fixed-point spec)

The order in which they run lives in :mod:`export.pipeline` (``PASS_ORDER``). The functions are
not re-exported here so that ``import export.passes.quantize`` always names the module.
"""
