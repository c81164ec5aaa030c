"""Energy of SVFormer run records: cost models, three accounting methods, aggregation and reports.

Library entry points (the ``energy-report`` command is a thin wrapper around them):

- :func:`get_cost_model` (``fp32`` / ``fp16`` / ``int8`` presets, the ``loihi`` chip table or a TOML file);
- :func:`place_bundle` / :func:`bill_record` (a bundle's core parts on a chip; one record's chip bill);
- :func:`collect_records` / :func:`read_record` (run records from files, folders or ``./runs``);
- :func:`aggregate` (records of one model + a cost model -> the report dict, JSON-ready);
- :func:`report_from_paths` (both steps at once);
- renderers in :mod:`deploy.energy.report` (terminal, CSV, Markdown) and :mod:`deploy.energy.html`.
"""

from .chip_bill import bill_record
from .cost_models import CHIPS, LOIHI, PRESETS, ChipModel, CostModel, get_chip, get_cost_model, load_cost_model_toml
from .methods import METHODS, evaluate_record
from .placement import place, place_bundle
from .records import RunRecord, aggregate, collect_records, read_record, report_from_paths, validate_record

__all__ = [
    "CHIPS", "LOIHI", "ChipModel", "bill_record", "get_chip", "place", "place_bundle",
    "PRESETS", "CostModel", "get_cost_model", "load_cost_model_toml", "METHODS", "evaluate_record", "RunRecord",
    "aggregate", "collect_records", "read_record", "report_from_paths", "validate_record",
]
