"""Command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import json

import click

from hwsim import __version__
from hwsim.io import atomic_write_text


@click.group()
@click.version_option(__version__, prog_name="hwsim")
def main() -> None:
    """hwsim: bit-exact quantized inference on emulated integer hardware."""


@main.command()
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the demo layer.")
@click.option("--batch", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--acc-bits",
    type=click.IntRange(8, 64),
    default=16,
    show_default=True,
    help="Width of the narrow accumulator designs.",
)
@click.option(
    "--tile-rows",
    type=click.IntRange(1, 4096),
    default=16,
    show_default=True,
    help="Rows of the systolic column in the tiled design.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the results as JSON (atomically).",
)
def demo(seed: int, batch: int, acc_bits: int, tile_rows: int, json_path: str | None) -> None:
    """Run one conv layer on several accumulator and scale-register designs."""
    from hwsim.demo import run_demo

    res = run_demo(seed=seed, batch=batch, acc_bits=acc_bits, tile_rows=tile_rows)
    layer = res["layer"]
    click.echo(
        f"conv x{tuple(layer['x'])} * w{tuple(layer['w'])}, pad 1, "
        f"{layer['macs'] / 1e6:.1f} M MACs (seed {seed})\n"
    )
    head = (
        f"{'accumulator design':<34}{'overflows':>12}{'outputs hit':>13}{'bits needed':>13}"
        f"{'exact outputs':>15}{'rel. error':>12}{'ms':>9}"
    )
    click.echo(head)
    click.echo("-" * len(head))
    for r in res["accumulators"]:
        click.echo(
            f"{r['design']:<34}{r['overflow_events']:>12}{r['outputs_overflowed']:>13}"
            f"{r['bits_needed']:>13}{r['exact_outputs']:>14.2%} {r['relative_error']:>11.2%}"
            f"{r['seconds'] * 1e3:>9.1f}"
        )
    click.echo(f"\nrequantization to int8, real scale {res['real_scale']:.6g}:")
    for r in res["registers"]:
        click.echo(
            f"  {r['register']:<14} clamped {r['clamped']:>6}   "
            f"differs from ort on {r['differs_from_ort']} outputs"
        )
    if json_path:
        atomic_write_text(json_path, json.dumps(res, indent=2) + "\n")
        click.echo(f"\nwrote {json_path}")


if __name__ == "__main__":
    main()
