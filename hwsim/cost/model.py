"""Per-layer cost: cycles, SRAM and DRAM traffic, stalls, energy and scheme overheads.

Compute cycles and SRAM operand traffic are SCALE-Sim v2's (:mod:`hwsim.cost.dataflow`), per
group of a grouped convolution (``groups`` times). DRAM traffic and stalls are SCALE-Sim 3.0.0's
memory system in its CALC bandwidth mode (:mod:`hwsim.cost.memory`, ``docs/cost.md`` eq. M1-M12)
or, with ``Accelerator.bandwidth_mode = "user"``, its USER mode (:mod:`hwsim.cost.user_mode`),
per group: ifmap / filter words its read buffers fetch, ofmap words its write buffer drains
(partial sums too, for ``ws``/``is`` with more than one K fold), its stalls (the write buffer's;
CALC-mode reads never stall) and its total cycles incl. prefetch. SCALE-Sim's word is one byte;
hwsim's words are operand elements, so an SRAM of ``S`` KiB holds ``S * 8192 / bits`` words of its
operand, and ``dram_bytes`` = words x bits / 8 (rounded up; ofmap words at ``out_bits``, partial
sums at ``acc_bits``).

Energy (pJ, :class:`hwsim.cost.energy.EnergyTable`): ``mac`` = MACs x ``mac_pj(abits, wbits,
acc_bits)``; ``sram`` = every SRAM read/write bit x ``sram_pj_per_bit(size)``; ``dram`` = DRAM
bits x ``dram_pj_per_bit``; ``scheme`` = the scheme's extra operations:

* requantization, per output: a ``32 x 32`` multiply and an ``acc_bits`` rounding add
  (``tflite*``, ``ort``), or only the rounding shift-add (``pow2``);
* the per-sample range unit (eq. 17-19, ``docs/numerics.md``), exactly the operations the
  integer executor performs and counts (``LayerStats.ops``; a test holds the two equal):
  ``range_compares`` one ``acc_bits`` compare per output of a ``dynamic`` / ``shift`` tensor;
  ``range_registers`` one reciprocal per sample (``dynamic``) or per batch (a ``runtime``
  shift base), costed as a ``32 x 32`` multiply (a ``pow2`` one is a leading-one detection,
  an add); ``shift_selects`` ``s_max + 1`` register evaluations of each sample's range
  (``shift``); ``bias_shifts`` a bias shifted by its sample's input shift, per sample and
  channel (an add); ``bias_registers`` + ``bias_requants`` a dynamic input's per-sample bias
  register and its application per channel; ``align_requants`` per-channel weight scales
  brought to one grid before range finding, per output. Register evaluations are multiplies
  except with ``pow2`` registers (shift-adds). No per-output barrel shift: a sample's shift
  moves its register's shift field. Per-token schemes: the same operations per token
  (``Layer.rows_out`` / ``rows_in`` tokens per batch instead of samples); a matmul of two
  activations with per-token operands also ``align_requants`` per output where its steps vary
  per row (``q @ kᵀ``), and for ``p @ v`` either ``token_shifts`` (per-token shift: one
  shift-add per product, eq. 13-14 with the tokens as groups) or ``align_requants`` per
  element of ``v`` (per-token dynamic).

Scale-register storage (bits): ``(32 + 8)`` per multiplier+shift register (``8`` for a
``pow2`` shift), one per tensor or per output channel, plus ``ceil(log2(s_max + 1))`` bits per
sample for per-sample shifts (and one register for a runtime base) or a full register per
sample for dynamic scales.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hwsim.cost.config import Accelerator, ConfigError
from hwsim.cost.dataflow import Dataflow, gemm_counts, utilization
from hwsim.cost.memory import memory_cost, sram_words
from hwsim.cost.topology import Layer
from hwsim.cost.user_mode import memory_cost_user


def _bytes(elems: int, bits: int) -> int:
    return math.ceil(elems * bits / 8)


@dataclass
class LayerCost:
    name: str
    macs: int
    compute_cycles: int
    stall_cycles: int
    total_cycles: int
    utilization: float
    sram_reads: int
    sram_writes: int
    dram_bytes: int
    dram_words: dict  # SCALE-Sim's DRAM words: ifmap and filter reads, ofmap writes
    total_cycles_incl_prefetch: int  # SCALE-Sim's: first DRAM read to last DRAM write
    energy_pj: float
    energy_breakdown: dict
    scheme_ops: dict
    register_bits: int
    widths: dict

    def as_dict(self) -> dict:
        return asdict(self)


def scheme_ops(layer: Layer) -> dict:
    """The scheme's operations of one layer for one batch of ``layer.samples`` (module
    docstring): requantization per output and the per-sample range unit's operations, named as
    the integer executor counts them (``LayerStats.ops``)."""
    outputs = layer.ofmap_elems
    channels = layer.Mf * layer.groups
    per_sample = layer.act_mode in ("dynamic", "shift")
    n = layer.rows_out or layer.samples  # one range per sample, or per token
    n_in = layer.rows_in or layer.samples  # one bias register per sample, or per token
    bias_in = layer.bias and layer.in_mode in ("dynamic", "shift")
    ops = {
        "requant_multiplies": 0 if layer.register == "pow2" else outputs,
        "requant_shift_adds": outputs,
        "range_compares": outputs if per_sample else 0,
        "range_registers": n
        if layer.act_mode == "dynamic"
        else (1 if layer.act_mode == "shift" and layer.shift_base == "runtime" else 0),
        "shift_selects": n * (layer.s_max + 1) if layer.act_mode == "shift" else 0,
        "bias_shifts": n_in * channels if bias_in and layer.in_mode == "shift" else 0,
        "bias_registers": n_in if bias_in and layer.in_mode == "dynamic" else 0,
        "bias_requants": n_in * channels if bias_in and layer.in_mode == "dynamic" else 0,
        "align_requants": (outputs if per_sample and layer.align else 0) + layer.token_aligns,
    }
    if layer.token_shifts:
        ops["token_shifts"] = layer.token_shifts
    return ops


def _check_buffers(acc: Accelerator, layer: str, widths, kb) -> None:
    """Each SRAM holds at least SCALE-Sim's 100 words of its operand (100 sets of
    ``floor(words / 100)``), and in USER mode a fetch of ``dram_words_per_cycle`` words (one
    line) is at most half of it (a double-buffered half): else a ConfigError naming the field,
    its value and the operand's width (a wider line would be padding fetched as DRAM traffic,
    eq. U4, and priced as DRAM energy)."""
    for (bits, name), op_kb in zip(widths, kb, strict=True):
        kb = getattr(acc, f"{name}_sram_kb")
        words = sram_words(op_kb)  # the number the memory system uses
        if words < 100:
            raise ConfigError(
                f"{name}_sram_kb = {kb:g} KiB holds {words} {bits}-bit words (layer {layer!r}); "
                "SCALE-Sim's memory system needs at least 100"
            )
        bw = acc.dram_words_per_cycle
        if acc.bandwidth_mode == "user" and bw > words // 2:
            raise ConfigError(
                f"dram_words_per_cycle = {bw:g} (USER bandwidth mode) is more than half of the "
                f"{name} SRAM's {words} {bits}-bit words ({name}_sram_kb = {kb:g}, layer "
                f"{layer!r}): each fetch would be mostly padding"
            )


def cost_layer(layer: Layer, acc: Accelerator) -> LayerCost:
    """Cost of one layer on the accelerator (module docstring)."""
    wb = layer.wbits or acc.weight_bits
    ab = layer.abits or acc.act_bits
    cb = layer.acc_bits or acc.acc_bits
    ob = layer.out_bits or acc.out_bits
    g = layer.groups
    c = gemm_counts(acc.dataflow, acc.rows, acc.cols, layer.Np, layer.Mf, layer.K)
    compute = c.compute_cycles * g
    if_reads, fl_reads, of_writes = c.ifmap_reads * g, c.filter_reads * g, c.ofmap_writes * g
    kfolds = math.ceil(layer.K / acc.rows)
    partial = acc.dataflow is not Dataflow.OS and kfolds > 1
    # DRAM: SCALE-Sim's memory system (hwsim.cost.memory) per group, in operand words; an SRAM
    # of S KiB holds S * 1024 * 8 / bits words of its operand (SCALE-Sim: one byte a word)
    of_bits = cb if partial else ob
    kb = (
        acc.ifmap_sram_kb * 8 / ab,
        acc.filter_sram_kb * 8 / wb,
        acc.ofmap_sram_kb * 8 / of_bits,
    )
    _check_buffers(acc, layer.name, ((ab, "ifmap"), (wb, "filter"), (of_bits, "ofmap")), kb)
    if acc.bandwidth_mode == "user":
        m = memory_cost_user(
            acc.dataflow,
            acc.rows,
            acc.cols,
            layer.Np,
            layer.K,
            layer.Mf,
            kb,
            int(acc.dram_words_per_cycle),
            layer.geometry,
        )
    else:
        m = memory_cost(
            acc.dataflow, acc.rows, acc.cols, layer.Np, layer.K, layer.Mf, kb, layer.geometry
        )
    words = {
        "ifmap": m.dram_ifmap_reads * g,
        "filter": m.dram_filter_reads * g,
        "ofmap": m.dram_ofmap_writes * g,
    }
    # the outputs at out_bits; with K folds (ws / is) the rest are partial sums at acc_bits
    final = min(layer.ofmap_elems, words["ofmap"]) if partial else words["ofmap"]
    dram = (
        _bytes(words["ifmap"], ab)
        + _bytes(words["filter"], wb)
        + _bytes(final, ob)
        + _bytes(words["ofmap"] - final, cb)  # partial sums (ws / is with K folds)
    )
    stall = m.stall_cycles * g
    # energy
    e = acc.energy
    sram_bits_if = if_reads * ab
    sram_bits_fl = fl_reads * wb
    sram_bits_of = of_writes * of_bits
    mac_pj = layer.macs * e.mac_pj(ab, wb, cb)
    sram_pj = (
        sram_bits_if * e.sram_pj_per_bit(acc.ifmap_sram_kb)
        + sram_bits_fl * e.sram_pj_per_bit(acc.filter_sram_kb)
        + sram_bits_of * e.sram_pj_per_bit(acc.ofmap_sram_kb)
    )
    dram_pj = dram * 8 * e.dram_pj_per_bit
    ops = scheme_ops(layer)
    pow2 = layer.register == "pow2"
    evals = ops["shift_selects"] + ops["bias_registers"] + ops["bias_requants"]
    evals += ops["align_requants"]
    muls = ops["requant_multiplies"] + (0 if pow2 else evals + ops["range_registers"])
    adds = ops["requant_shift_adds"] + ops["range_compares"] + ops["bias_shifts"]
    adds += ops.get("token_shifts", 0)
    adds += evals + ops["range_registers"] if pow2 else evals
    scheme_pj = muls * e.mul_pj(32, 32) + adds * e.add_pj(cb)
    reg_bits = layer.scale_registers * (8 if pow2 else 40)
    rows = layer.rows_out or layer.samples
    if layer.act_mode == "shift":
        reg_bits += rows * max(1, math.ceil(math.log2(layer.s_max + 1)))
        reg_bits += 0 if layer.shift_base == "static" else (8 if pow2 else 40)
    elif layer.act_mode == "dynamic":
        reg_bits += rows * (8 if pow2 else 40)
    breakdown = {"mac": mac_pj, "sram": sram_pj, "dram": dram_pj, "scheme": scheme_pj}
    return LayerCost(
        name=layer.name,
        macs=layer.macs,
        compute_cycles=compute,
        stall_cycles=stall,
        total_cycles=compute + stall,
        utilization=utilization(layer.macs, acc.rows, acc.cols, compute),
        sram_reads=if_reads + fl_reads,
        sram_writes=of_writes,
        dram_bytes=dram,
        dram_words=words,
        total_cycles_incl_prefetch=m.total_cycles_incl_prefetch * g,
        energy_pj=sum(breakdown.values()),
        energy_breakdown=breakdown,
        scheme_ops=ops,
        register_bits=reg_bits,
        widths={"weight": wb, "act": ab, "acc": cb, "out": ob},
    )


@dataclass
class CostReport:
    accelerator: Accelerator
    layers: list[LayerCost]

    @property
    def totals(self) -> dict:
        keys = (
            "macs",
            "compute_cycles",
            "stall_cycles",
            "total_cycles",
            "sram_reads",
            "sram_writes",
            "dram_bytes",
            "total_cycles_incl_prefetch",
            "energy_pj",
            "register_bits",
        )
        t = {k: sum(getattr(r, k) for r in self.layers) for k in keys}
        t["dram_words"] = {
            k: sum(r.dram_words[k] for r in self.layers) for k in ("ifmap", "filter", "ofmap")
        }
        t["energy_breakdown"] = {
            k: sum(r.energy_breakdown[k] for r in self.layers)
            for k in ("mac", "sram", "dram", "scheme")
        }
        t["seconds"] = t["total_cycles"] / (self.accelerator.clock_mhz * 1e6)
        return t

    def as_dict(self) -> dict:
        return {
            "accelerator": self.accelerator.as_dict(),
            "layers": [r.as_dict() for r in self.layers],
            "totals": self.totals,
        }

    def table(self) -> str:
        a = self.accelerator
        t = self.totals
        if a.bandwidth_mode == "calc":  # SCALE-Sim's CALC: never stalls; say what it needs
            words = sum(t["dram_words"].values())
            need = words / t["compute_cycles"] if t["compute_cycles"] else 0.0
            dram = f"DRAM reads as fast as needed (calc: {need:.2f} words/cycle on average)"
        else:
            dram = f"DRAM {a.dram_words_per_cycle:g} words/cycle per operand (user)"
        lines = [
            f"array {a.rows}x{a.cols} {a.dataflow.value}, SRAM {a.ifmap_sram_kb:g}/"
            f"{a.filter_sram_kb:g}/{a.ofmap_sram_kb:g} KiB, {dram}, {a.clock_mhz:g} MHz"
        ]
        hdr = (
            f"{'layer':<24} {'MACs':>11} {'compute':>10} {'stall':>8} {'util':>6} "
            f"{'SRAM rd':>11} {'DRAM B':>10} {'MAC uJ':>8} {'SRAM uJ':>8} {'DRAM uJ':>8} "
            f"{'sch uJ':>7}"
        )
        lines += [hdr, "-" * len(hdr)]
        for r in self.layers + [None]:
            if r is None:
                t = self.totals
                lines.append("-" * len(hdr))
                eb = t["energy_breakdown"]
                lines.append(
                    f"{'total':<24} {t['macs']:>11} {t['compute_cycles']:>10} "
                    f"{t['stall_cycles']:>8} {'':>6} {t['sram_reads']:>11} {t['dram_bytes']:>10} "
                    f"{eb['mac'] / 1e6:>8.3f} {eb['sram'] / 1e6:>8.3f} {eb['dram'] / 1e6:>8.3f} "
                    f"{eb['scheme'] / 1e6:>7.3f}"
                )
                lines.append(
                    f"total {t['total_cycles']} cycles = {t['seconds'] * 1e3:.3f} ms, "
                    f"{t['energy_pj'] / 1e6:.3f} uJ"
                )
                break
            eb = r.energy_breakdown
            lines.append(
                f"{r.name[-24:]:<24} {r.macs:>11} {r.compute_cycles:>10} {r.stall_cycles:>8} "
                f"{r.utilization:>6.1%} {r.sram_reads:>11} {r.dram_bytes:>10} "
                f"{eb['mac'] / 1e6:>8.3f} {eb['sram'] / 1e6:>8.3f} {eb['dram'] / 1e6:>8.3f} "
                f"{eb['scheme'] / 1e6:>7.3f}"
            )
        return "\n".join(lines)


def cost(layers: list[Layer], accelerator: Accelerator) -> CostReport:
    """Cost every layer."""
    return CostReport(accelerator, [cost_layer(layer, accelerator) for layer in layers])
