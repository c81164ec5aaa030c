"""Energy of SVFormer run records: cost models, three accounting methods, aggregation and reports.

Library entry points (the ``energy-report`` command is a thin wrapper around them):

- :func:`get_cost_model` (``fp32`` / ``fp16`` / ``int8`` presets or a TOML file);
- :func:`collect_records` / :func:`read_record` (run records from files, folders or ``./runs``);
- :func:`aggregate` (records of one model + a cost model -> the report dict, JSON-ready);
- :func:`report_from_paths` (both steps at once);
- renderers in :mod:`deploy.energy.report` (terminal, CSV, Markdown) and :mod:`deploy.energy.html`.
"""

from .cost_models import PRESETS, CostModel, get_cost_model, load_cost_model_toml
from .methods import METHODS, evaluate_record
from .records import RunRecord, aggregate, collect_records, read_record, report_from_paths, validate_record

__all__ = [
    "PRESETS", "CostModel", "get_cost_model", "load_cost_model_toml", "METHODS", "evaluate_record", "RunRecord",
    "aggregate", "collect_records", "read_record", "report_from_paths", "validate_record",
]
