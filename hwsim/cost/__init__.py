"""Hardware cost model: SCALE-Sim-exact cycles, memory traffic, energy and scheme overheads.

``dataflow`` (cycles and SRAM traffic per dataflow), ``energy`` (45 nm table, bit-width fits),
``config`` (the Accelerator dataclass and its file format), ``topology`` (layers from
SCALE-Sim CSVs or hwsim models), ``memory`` / ``user_mode`` (SCALE-Sim's memory system: DRAM
words, stalls; CALC and USER bandwidth modes), ``model`` (per-layer cost and totals). See
``docs/cost.md``.
"""

from hwsim.cost.config import Accelerator, ConfigError, load_config, parse_array
from hwsim.cost.dataflow import Dataflow, compute_cycles, gemm_counts
from hwsim.cost.energy import EnergyTable
from hwsim.cost.memory import ConvGeometry, MemoryCost, memory_cost
from hwsim.cost.model import CostReport, LayerCost, cost, cost_layer
from hwsim.cost.topology import Layer, TopologyError, layers_from_program, read_topology
from hwsim.cost.user_mode import memory_cost_user

__all__ = [
    "Accelerator",
    "ConfigError",
    "ConvGeometry",
    "CostReport",
    "Dataflow",
    "EnergyTable",
    "Layer",
    "LayerCost",
    "MemoryCost",
    "TopologyError",
    "compute_cycles",
    "cost",
    "cost_layer",
    "gemm_counts",
    "layers_from_program",
    "load_config",
    "memory_cost",
    "memory_cost_user",
    "parse_array",
    "read_topology",
]
