"""Writers: the IR graph as NIR (``nir_writer``), ONNX (``onnx_writer``) and Lava-DL netx HDF5 (``netx_writer``),
with the partition into sequential core parts and host nodes they share (``partition``).

``lava_run.py`` is a standalone script for the separate Lava venv (it imports no project code).
Reference: ``docs/export.md``.
"""

from .netx_writer import netx_issue, netx_net, read_netx, simulate_netx, write_netx
from .nir_writer import (
    NIRFileError,
    ir_to_nir,
    nir_part_issue,
    nir_to_ir,
    read_nir,
    read_nir_ir,
    run_spikingjelly_part,
    write_nir,
    write_nir_part,
)
from .onnx_writer import check_onnx, write_onnx
from .partition import Part, Partition, partition

__all__ = [
    "NIRFileError", "Part", "Partition", "check_onnx", "ir_to_nir", "netx_issue", "netx_net", "nir_part_issue",
    "nir_to_ir", "partition", "read_netx", "read_nir", "read_nir_ir", "simulate_netx", "run_spikingjelly_part",
    "write_netx", "write_nir", "write_nir_part", "write_onnx",
]
