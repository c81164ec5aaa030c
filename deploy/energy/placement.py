"""Placement and fit: the core-capable parts of a bundle mapped onto a chip's cores (see ``docs/energy.md``).

The parts are the partition's sequential ``spikes -> [conv/dense -> neuron] x L`` chains
(:mod:`export.writers.partition`). Each part layer is a set of neurons (compartments, ``C x H x W`` of
its output) with a fan-in of ``C_in/groups x kH x kW`` synapses per neuron. Attention's q, k and v are
three parts on the rows of one projection (a head split): each holds ``share`` = its rows / all rows of
that op, and the bill gives it that share of the op's counted events (exact for a dense projection,
where every input spike drives every row).

**Placement (documented, simple, deterministic).** Layer-contiguous and row-major: cores are handed
out in order, part by part and layer by layer; a layer's neurons, in position-major order (output
rows, then columns, then channels: ``H, W, C``, so all channels of a position sit together and
neighbouring positions on neighbouring cores), fill its cores ``n`` at a time (the last core takes
the rest). ``n`` is the largest number of neurons per core for which every per-core limit of the
chip holds (all grow with ``n``, so a bisection finds it):

1. compartments: ``n <= compartments_per_core``;
2. synaptic memory: ``n x fan_in x weight_bits / 8 <= synaptic_memory_bytes_per_core`` (every
   synapse stored per neuron, no weight sharing; weight bits are the bundle's quantization bits, 8
   for a float bundle);
3. fan-in: the input neurons a block of ``n`` consecutive neurons reads (its input axons, an upper
   bound: :meth:`LayerGeometry.input_axons`) fit in ``fan_in_axons_per_core``;
4. fan-out: ``n x (cores of the next layer one spike reaches)`` fits in ``fan_out_edges_per_core``
   (:meth:`LayerGeometry.destinations`: the cores holding the output positions that read one input
   position, an upper bound; every core for a dense layer; the last layer of a part sends to the
   host interface), so layers are sized last to first within a part.

A layer where even one neuron per core breaks a limit does not fit; it is still placed at the most
neurons per core that the other limits allow and the fit report names the broken limit.

**Mesh.** Core ``k`` is on chip ``k // cores_per_chip``; within the chip core ``j`` is on tile
``j // cores_per_tile``, tiles row-major on a ``mesh_tiles_x x mesh_tiles_y`` grid, chips side by
side along x. A spike message to a core of the same tile costs the chip's within-tile spike energy;
to another tile, ``|dx|`` east-west hops plus ``|dy|`` north-south hops (dimension-order routing).
Spikes into and out of a part go through a host interface on every chip (Loihi has embedded x86
cores and off-chip interfaces on each chip), taken at the chip's first tile: a part's output spikes go
to the interface of their core's chip, its input spikes come from the interface of the chip that holds
their first destination core.

**Hops per spike.** A spike of a source core goes to the ``d`` destination cores (the fan-out bound
above) of the next layer centred on the same relative position in that layer; spikes are taken as
spread evenly over a layer's neurons (records count spikes per layer and step, not per neuron), so
the hop figures are means over the layer's source cores, weighted by their neurons. A part's input
spikes are spread evenly over its first layer's cores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from svformer_deploy.svformer.errors import SVFormerError

from .cost_models import ChipModel

FLOAT_WEIGHT_BITS = 8
"""Synapse width assumed for a float bundle (what the netx writer stores: 8-bit weights)."""


@dataclass(frozen=True)
class LayerGeometry:
    """One part layer as the placement needs it (shapes in the part's ``[C, H, W]`` layout)."""

    part: int
    weighted: str
    neuron: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    share: float = 1.0  # fraction of the weighted op's output rows this layer holds (< 1 after a head split)

    @property
    def neurons(self) -> int:
        c, h, w = self.out_shape
        return c * h * w

    @property
    def fan_in(self) -> int:
        """Synapses per neuron (interior neurons; border neurons of a padded conv have fewer)."""
        return self.in_shape[0] // self.groups * self.kernel[0] * self.kernel[1]

    def input_axons(self, n: int) -> int:
        """Upper bound on the input neurons (axons) that a block of ``n`` consecutive neurons reads.

        Neurons are in position-major order (``H, W, C``: all channels of a position together), so the
        block covers at most ``P = ceil(n / C_out) + 1`` consecutive output positions, at most
        ``R = ceil(P / W_out) + 1`` output rows: it reads ``(R - 1) x stride_h + kH`` input rows (at most all)
        and, when ``P < W_out``, at most ``(P - 1) x stride_w + 2 kW`` input columns (two row segments), else
        all; times the input channels of every group the block touches.
        """
        co, ho, wo = self.out_shape
        ci, hi, wi = self.in_shape
        positions = min(ho * wo, math.ceil(n / co) + 1)
        rows = min(ho, math.ceil(positions / wo) + 1)
        in_rows = min(hi, (rows - 1) * self.stride[0] + self.kernel[0])
        in_cols = wi if positions >= wo else min(wi, (positions - 1) * self.stride[1] + 2 * self.kernel[1])
        channels = min(co, n)
        per_group = co // self.groups
        groups = min(self.groups, math.ceil(channels / per_group) + 1)
        return min(ci, groups * (ci // self.groups)) * in_rows * in_cols

    def destinations(self, n: int, cores: int) -> int:
        """Upper bound on the cores of this layer that one input neuron's spike reaches, when this layer holds
        ``n`` neurons per core on ``cores`` cores: the output positions that read one input position lie in at
        most ``ceil(kH / stride_h)`` rows of ``ceil(kW / stride_w)`` positions; each such row segment of
        ``C_out`` channels per position spans ``ceil(segment / n) + 1`` cores. A dense layer (one position):
        every core."""
        co, ho, wo = self.out_shape
        if ho * wo == 1:
            return cores
        rows = min(ho, math.ceil(self.kernel[0] / self.stride[0]))
        cols = min(wo, math.ceil(self.kernel[1] / self.stride[1]))
        return min(cores, rows * (math.ceil(cols * co / n) + 1))


@dataclass
class LayerPlacement:
    """Where one part layer went and what it uses."""

    part: int
    weighted: str
    neuron: str
    neurons: int
    fan_in: int
    share: float
    synapses: int
    synapse_bytes: float
    neurons_per_core: int
    cores: int
    first_core: int
    fits: bool
    limited_by: str
    broken: list[str] = field(default_factory=list)
    # routing of this layer's output spikes (means per spike) and of the part's input spikes (first layer)
    messages_per_spike: float = 0.0
    within_tile_per_spike: float = 0.0
    ew_hops_per_spike: float = 0.0
    ns_hops_per_spike: float = 0.0
    max_route_ns: float = 0.0
    input_messages_per_spike: float = 0.0
    input_within_tile_per_spike: float = 0.0
    input_ew_hops_per_spike: float = 0.0
    input_ns_hops_per_spike: float = 0.0
    input_max_route_ns: float = 0.0

    def routing_pj(self, chip: ChipModel, spikes: float, incoming: bool = False) -> float:
        """Energy (pJ) of routing ``spikes`` output spikes of this layer (``incoming``: input spikes of the part)."""
        e = chip.energy_pj
        if incoming:
            per = (self.input_within_tile_per_spike * e["spike_within_tile"]
                   + self.input_ew_hops_per_spike * e["hop_east_west"]
                   + self.input_ns_hops_per_spike * e["hop_north_south"])
        else:
            per = (self.within_tile_per_spike * e["spike_within_tile"] + self.ew_hops_per_spike * e["hop_east_west"]
                   + self.ns_hops_per_spike * e["hop_north_south"])
        return per * spikes


@dataclass
class Placement:
    """A bundle's core parts on a chip: per layer, totals, utilisation and fit."""

    chip: str
    weight_bits: int
    layers: list[LayerPlacement]
    cores: int
    chips: int
    tiles: int
    fits: bool
    problems: list[str]
    compartment_utilisation: float
    synaptic_memory_utilisation: float
    notes: list[str] = field(default_factory=list)

    def by_neuron(self) -> dict[str, LayerPlacement]:
        return {lp.neuron: lp for lp in self.layers}

    def core_nodes(self) -> set[str]:
        return {n for lp in self.layers for n in (lp.weighted, lp.neuron)}

    def to_dict(self) -> dict[str, Any]:
        return {"chip": self.chip, "weight_bits": self.weight_bits, "cores": self.cores, "chips": self.chips,
                "tiles": self.tiles, "fits": self.fits, "problems": list(self.problems),
                "compartment_utilisation": self.compartment_utilisation,
                "synaptic_memory_utilisation": self.synaptic_memory_utilisation, "notes": list(self.notes),
                "layers": [asdict(lp) for lp in self.layers]}


# ---------------------------------------------------------------------------------------------
def geometry_from_graph(g: nx.DiGraph, parts: Sequence[Any] | None = None) -> list[LayerGeometry]:
    """The geometry of every layer of the partition's parts of IR graph ``g`` (``parts``: from
    :func:`export.writers.partition.partition`, computed when not given)."""
    from svformer_deploy.export import ir
    from svformer_deploy.export.writers.partition import partition

    if parts is None:
        parts = partition(g).parts
    out = []
    for p in parts:
        for la in p.layers:
            op = ir.op_of(g, la.weighted)
            w, groups, stride, padding = op.chain_conv(op.weight)
            share = 1.0 if la.rows is None else (la.rows[1] - la.rows[0]) / int(w.shape[0])
            out.append(LayerGeometry(part=p.index, weighted=la.weighted, neuron=la.neuron, share=share,
                                     in_shape=tuple(int(v) for v in la.in_shape),
                                     out_shape=tuple(int(v) for v in la.out_shape),
                                     kernel=(int(w.shape[2]), int(w.shape[3])), stride=tuple(int(v) for v in stride),
                                     padding=tuple(int(v) for v in padding), groups=int(groups)))
    return out


def bundle_weight_bits(manifest: Mapping[str, Any]) -> int:
    """Synapse bits of a bundle: its quantization's weight bits, else :data:`FLOAT_WEIGHT_BITS`."""
    q = manifest.get("quantization") or {}
    return int(q["weight_bits"]) if q.get("weight_bits") else FLOAT_WEIGHT_BITS


def place_bundle(bundle: Any, chip: ChipModel) -> Placement:
    """Place a loaded bundle's core parts on ``chip`` (the float IR's partition, the manifest's weight bits)."""
    return place(geometry_from_graph(bundle.graph("ir")), chip, bundle_weight_bits(bundle.manifest))


# ---------------------------------------------------------------------------------------------
def _limit_checks(geo: LayerGeometry, chip: ChipModel, bits: int, next_dest: int) -> dict[str, Any]:
    lim = chip.limits
    mem_bits = lim["synaptic_memory_bytes_per_core"] * 8
    return {
        "compartments": lambda n: n <= lim["compartments_per_core"],
        "synaptic memory": lambda n: n * geo.fan_in * bits <= mem_bits,
        "fan-in axons": lambda n: geo.input_axons(n) <= lim["fan_in_axons_per_core"],
        "fan-out edges": lambda n: n * next_dest <= lim["fan_out_edges_per_core"],
    }


def _largest(ok: Any, hi: int) -> int:
    """Largest n in 1..hi with ok(n) (ok monotone: true up to some n), 0 when ok(1) fails."""
    if not ok(1):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _per_core(geo: LayerGeometry, chip: ChipModel, bits: int, next_dest: int) -> tuple[int, str, list[str]]:
    """(neurons per core, the limit that sets it, limits broken even at one neuron per core); ``next_dest``:
    cores of the next layer that one spike of this layer reaches (1: the host interface)."""
    checks = _limit_checks(geo, chip, bits, next_dest)
    hi = min(chip.limits["compartments_per_core"], geo.neurons)
    broken = [name for name, ok in checks.items() if not ok(1)]
    usable = {name: ok for name, ok in checks.items() if name not in broken}
    n = _largest(lambda k: all(ok(k) for ok in usable.values()), hi)
    n = max(n, 1)
    if n == geo.neurons and n < chip.limits["compartments_per_core"]:
        limited = "layer size"
    else:
        limited = next((name for name, ok in usable.items() if not ok(n + 1)), "compartments")
    return n, limited, broken


def core_xy(k: np.ndarray | int, chip: ChipModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, tile id) of global core index ``k`` (see module doc: chips side by side along x)."""
    lim = chip.limits
    k = np.asarray(k, dtype=np.int64)
    chip_i, j = np.divmod(k, lim["cores_per_chip"])
    tile = j // lim["cores_per_tile"]
    ty, tx = np.divmod(tile, lim["mesh_tiles_x"])
    gx = chip_i * lim["mesh_tiles_x"] + tx
    tile_id = chip_i * (lim["mesh_tiles_x"] * lim["mesh_tiles_y"]) + tile
    return gx, ty, tile_id


def _windows(n_src: int, first: int, cores: int, dest: int) -> np.ndarray:
    """``[n_src, dest]`` destination core ids: for source ``i`` of ``n_src`` (spread evenly over the layer), the
    ``dest`` consecutive cores of the receiving layer (``first`` .. ``first + cores - 1``) centred on the same
    relative position (both layers are placed position-major, so neighbouring positions are on neighbouring
    cores)."""
    centre = np.floor((np.arange(n_src) + 0.5) / n_src * cores).astype(np.int64)
    start = np.clip(centre - dest // 2, 0, cores - dest)
    return first + start[:, None] + np.arange(dest)[None, :]


def _route_stats(src: np.ndarray, src_w: np.ndarray, dst: np.ndarray, chip: ChipModel) -> tuple[float, ...]:
    """Mean (messages, within-tile messages, E-W hops, N-S hops) per spike from cores ``src`` (weights ``src_w``)
    to their destination cores ``dst`` (``[len(src), d]``), and the longest route (ns)."""
    sx, sy, st = core_xy(src, chip)
    dx, dy, dt = core_xy(dst, chip)
    ew = np.abs(sx[:, None] - dx)
    ns = np.abs(sy[:, None] - dy)
    same = st[:, None] == dt
    w = src_w / src_w.sum()
    t = chip.time_ns
    route = np.where(same, t["spike_within_tile"], ew * t["hop_east_west"] + ns * t["hop_north_south"])
    return (float(dst.shape[1]), float((same.sum(axis=1) * w).sum()), float((ew.sum(axis=1) * w).sum()),
            float((ns.sum(axis=1) * w).sum()), float(route.max()))


def place(layers: Sequence[LayerGeometry], chip: ChipModel, weight_bits: int) -> Placement:
    """Layer-contiguous row-major placement of ``layers`` (part order, then layer order) on ``chip``."""
    if not 1 <= weight_bits <= 64:
        raise SVFormerError(f"weight bits must be in 1..64, got {weight_bits}")
    lim = chip.limits
    problems: list[str] = []
    notes: list[str] = []
    if weight_bits > lim["max_weight_bits"]:
        problems.append(f"weights of {weight_bits} bits are wider than the chip's {lim['max_weight_bits']}")
    by_part: dict[int, list[LayerGeometry]] = {}
    for geo in layers:
        by_part.setdefault(geo.part, []).append(geo)
    sized: dict[tuple[int, int], tuple[int, str, list[str], int]] = {}
    for part, geos in by_part.items():
        next_dest = 1  # the last layer of a part sends to the host interface
        for i in range(len(geos) - 1, -1, -1):
            n, limited, broken = _per_core(geos[i], chip, weight_bits, next_dest)
            cores = math.ceil(geos[i].neurons / n)
            sized[(part, i)] = (n, limited, broken, cores)
            next_dest = geos[i].destinations(n, cores)
    geos_of = {(part, i): geo for part, geos in by_part.items() for i, geo in enumerate(geos)}
    out: list[LayerPlacement] = []
    first = 0
    for part, geos in by_part.items():
        for i, geo in enumerate(geos):
            n, limited, broken, cores = sized[(part, i)]
            for b in broken:
                problems.append(f"part {part} {geo.neuron}: one neuron per core already breaks the {b} limit "
                                f"(fan-in {geo.fan_in}, input axons {geo.input_axons(1)})")
            out.append(LayerPlacement(
                part=part, weighted=geo.weighted, neuron=geo.neuron, neurons=geo.neurons, fan_in=geo.fan_in,
                share=geo.share,
                synapses=geo.neurons * geo.fan_in, synapse_bytes=geo.neurons * geo.fan_in * weight_bits / 8,
                neurons_per_core=n, cores=cores, first_core=first, fits=not broken, limited_by=limited,
                broken=broken))
            first += cores
    total = first
    for part, _ in by_part.items():
        part_layers = [lp for lp in out if lp.part == part]
        for i, lp in enumerate(part_layers):
            src = np.arange(lp.first_core, lp.first_core + lp.cores)
            src_w = np.full(lp.cores, lp.neurons_per_core, dtype=np.float64)
            src_w[-1] = lp.neurons - lp.neurons_per_core * (lp.cores - 1)
            nxt = part_layers[i + 1] if i + 1 < len(part_layers) else None
            cpc = lim["cores_per_chip"]
            if nxt is None:  # the host interface of the core's own chip (its first tile)
                dst = (src // cpc * cpc)[:, None]
            else:
                geo = geos_of[(part, i + 1)]
                dst = _windows(lp.cores, nxt.first_core, nxt.cores, geo.destinations(nxt.neurons_per_core,
                                                                                      nxt.cores))
            (lp.messages_per_spike, lp.within_tile_per_spike, lp.ew_hops_per_spike, lp.ns_hops_per_spike,
             lp.max_route_ns) = _route_stats(src, src_w, dst, chip)
            if i == 0:  # the part's input spikes, spread over the input, from the host interface of the chip
                d = geos_of[(part, 0)].destinations(lp.neurons_per_core, lp.cores)  # holding their first core
                virtual = min(lp.cores, 4096)
                dst = _windows(virtual, lp.first_core, lp.cores, d)
                (lp.input_messages_per_spike, lp.input_within_tile_per_spike, lp.input_ew_hops_per_spike,
                 lp.input_ns_hops_per_spike, lp.input_max_route_ns) = _route_stats(
                    dst[:, 0] // cpc * cpc, np.ones(virtual), dst, chip)
    chips = math.ceil(total / lim["cores_per_chip"]) if total else 0
    tiles = len(set(core_xy(np.arange(total), chip)[2].tolist())) if total else 0
    if chips > 1:
        notes.append(f"{chips} chips: chip-to-chip links are priced as ordinary tile hops (no published figure)")
    used_cx = sum(lp.neurons for lp in out)
    used_mem = sum(lp.synapse_bytes for lp in out)
    return Placement(
        chip=chip.name, weight_bits=weight_bits, layers=out, cores=total, chips=chips, tiles=tiles,
        fits=not problems, problems=problems,
        compartment_utilisation=used_cx / (total * lim["compartments_per_core"]) if total else 0.0,
        synaptic_memory_utilisation=used_mem / (total * lim["synaptic_memory_bytes_per_core"]) if total else 0.0,
        notes=notes)


# ---------------------------------------------------------------------------------------------
def render_fit(p: Placement, chip: ChipModel) -> str:
    """The fit report as terminal text: totals, then one row per part layer."""
    from svformer_deploy.deploy.render import table

    lim = chip.limits
    lines = [f"fit on {chip.name}: {p.cores} core(s) on {p.chips} chip(s) ({p.tiles} tile(s) of "
             f"{lim['cores_per_tile']} cores; {lim['cores_per_chip']} cores per chip), "
             f"synapses at {p.weight_bits} bits",
             f"  utilisation of the cores used: compartments {100 * p.compartment_utilisation:.1f}% "
             f"(of {lim['compartments_per_core']} per core), synaptic memory "
             f"{100 * p.synaptic_memory_utilisation:.1f}% (of {lim['synaptic_memory_bytes_per_core']:,} B per core)",
             "  verdict: " + (("fits" if p.layers else "nothing to place (no core-capable part)") if p.fits
                              else "does NOT fit: " + "; ".join(p.problems))]
    lines += [f"  note: {n}" for n in p.notes]
    rows = [[str(lp.part), lp.neuron, f"{lp.neurons:,}", str(lp.fan_in), f"{lp.neurons_per_core:,}",
             f"{lp.cores:,}", f"{lp.first_core}-{lp.first_core + lp.cores - 1}", lp.limited_by,
             f"{lp.messages_per_spike:g}", f"{lp.within_tile_per_spike:.3g}", f"{lp.ew_hops_per_spike:.4g}",
             f"{lp.ns_hops_per_spike:.4g}", "yes" if lp.fits else "NO: " + ", ".join(lp.broken)]
            for lp in p.layers]
    if rows:
        lines.append("")
        lines.append(table(["part", "layer (neuron)", "neurons", "fan-in", "per core", "cores", "core ids",
                            "limited by", "msgs/spike", "in-tile/spike", "E-W hops/spike", "N-S hops/spike", "fits"],
                           rows, "llrrrrllrrrrl"))
    else:
        lines.append("  no core-capable part: everything runs on the host")
    return "\n".join(lines)


def fit_summary(p: Placement) -> dict[str, Any]:
    """The few figures the export summary shows."""
    return {"chip": p.chip, "cores": p.cores, "chips": p.chips, "fits": p.fits, "problems": p.problems[:3],
            "compartment_utilisation": p.compartment_utilisation,
            "synaptic_memory_utilisation": p.synaptic_memory_utilisation, "weight_bits": p.weight_bits}
