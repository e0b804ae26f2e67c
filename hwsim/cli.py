"""Command line: thin wrappers that parse options, call :mod:`hwsim.api` and print the text
:mod:`hwsim.report` formats.

Errors: an :class:`hwsim.errors.HwsimError` (bad file, data, option or unsupported model), an
OSError naming a path, and click's usage errors are one ``Error: ...`` line (exit 1; usage
errors exit 2). Anything else is a bug in hwsim: it keeps its traceback, followed by a line
asking to report it.
"""

from __future__ import annotations

import functools
import sys

import click

from hwsim import __version__
from hwsim.cost.dataflow import Dataflow
from hwsim.datapath import ReductionOrder
from hwsim.datapath.isa import ISA_CHOICES
from hwsim.errors import HwsimError
from hwsim.numerics import Overflow, RoundingMode, ScaleKind
from hwsim.quant.scheme import (
    BN_FOLDS,
    CALIB_METHODS,
    DATA_FREE_RANGES,
    GRANULARITIES,
    NONLINEARS,
    PRESETS,
    SHIFT_BASES,
    WEIGHT_MODES,
)
from hwsim.study.fqt import DEFAULT_SEEDS as FQT_SEEDS
from hwsim.study.fqt import GRAD_BITS as FQT_GRAD_BITS
from hwsim.study.fqt import QUICK as FQT_QUICK
from hwsim.study.fqt import S_MAX_BITS as FQT_S_MAX_BITS
from hwsim.study.fqt import S_MAX_SWEEP as FQT_S_MAX_SWEEP
from hwsim.study.fqt import TASK_DEFAULTS as FQT_TASK_DEFAULTS
from hwsim.train import SCALINGS, TARGET_BITS
from hwsim.train.fqt import BITS_RANGE as GRAD_BITS_RANGE
from hwsim.train.fqt import GRAD_QUANTIZERS, S_MAX_RANGE

# Flag ranges shared by every command, the limits the library checks (LayerScheme, Accumulator)
#: Weight / activation widths (``LayerScheme.wbits`` / ``abits``, ``first_last_bits``).
BITS = (2, 16)
#: Accumulator widths (``LayerScheme.acc_bits``; the in-array ``tile_bits`` when not 0).
ACC_BITS = (8, 64)
#: Rows of a weight-stationary tile (``tile_rows``).
MAX_TILE_ROWS = 1 << 20
#: Samples per batch.
MAX_BATCH = 1 << 20
#: Seeds (of stochastic rounding, the datapath demo's layer, training).
SEED = click.IntRange(0, None)

BUG_HINT = (
    "hwsim: this is a bug in hwsim, not a problem with your input: please report it with the "
    "command line and this traceback"
)


@click.group()
@click.version_option(__version__, prog_name="hwsim")
def main() -> None:
    """hwsim: bit-exact quantized inference on emulated integer hardware."""


class CliError(click.ClickException):
    """A user-facing error: printed as 'Error: ...' with exit code 1, no traceback."""


def _first_run_note() -> None:
    """On a fresh install, say that the kernels compile now (stderr, once per command), and
    compile them in a second process meanwhile (:func:`hwsim.jitcache.start_warming`)."""
    from hwsim import jitcache

    if not jitcache.kernels_cached():
        click.echo(jitcache.FIRST_RUN_NOTE, err=True)
        jitcache.start_warming()


def _guard(fn):
    """User errors (HwsimError, an OSError naming a path) become one clean ``Error:`` line;
    click's exceptions pass; any other exception is a bug: it keeps its traceback, followed by
    :data:`BUG_HINT` (a note on the exception; on Python 3.10 printed to stderr before it)."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except HwsimError as e:
            raise CliError(str(e)) from None
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except OSError as e:
            if e.filename is None and e.filename2 is None:
                _bug(e)
                raise
            # e.g. an output directory removed during the run: names the user's path
            raise CliError(str(e)) from None
        except Exception as e:
            _bug(e)
            raise

    return wrapper


def _bug(e: BaseException) -> None:
    if hasattr(e, "add_note"):  # Python >= 3.11: printed after the traceback
        e.add_note(BUG_HINT)
    else:  # pragma: no cover - Python 3.10
        click.echo(BUG_HINT, err=True)


# ------------------------------------------------------------------------------------------------
# option callbacks
# ------------------------------------------------------------------------------------------------
def _out(ctx, param, value):
    """An output file path, checked before any work (its directory exists and is writable):
    a usage error (exit 2) naming the path as given, not a failure after the run."""
    from hwsim.io import output_path_problem

    if value is not None and (why := output_path_problem(value)):
        raise click.BadParameter(f"cannot write {why}", ctx=ctx, param=param)
    return value


def _out_parents(ctx, param, value):
    """An output file whose missing parent directories are created (``train -o``)."""
    from pathlib import Path

    from hwsim.io import output_path_problem

    if value is None:
        return value
    why = "it is a directory" if Path(value).is_dir() else None
    if why or (why := output_path_problem(Path(value).parent, directory=True)):
        raise click.BadParameter(f"cannot write {value!r}: {why}", ctx=ctx, param=param)
    return value


def _out_dir(ctx, param, value):
    """An output directory (created with its parents), checked like :func:`_out`."""
    from hwsim.io import output_path_problem

    if value is not None and (why := output_path_problem(value, directory=True)):
        raise click.BadParameter(f"cannot write {why}", ctx=ctx, param=param)
    return value


def _bits_list(ctx, param, value):
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    lo, hi = BITS
    for b in out:
        if not lo <= b <= hi:
            raise click.BadParameter(f"bit widths must be in [{lo}, {hi}], got {b}")
    return out


def _tile_bits(ctx, param, value):
    lo, hi = ACC_BITS
    if value and not lo <= value <= hi:
        raise click.BadParameter(
            f"must be 0 (the accumulator's width) or in [{lo}, {hi}], got {value}"
        )
    return value


def _input_range(ctx, param, value):
    if not value:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI, got {value!r}") from None
    return (lo, hi)


def _values(enum) -> list[str]:
    return [m.value for m in enum]


# ------------------------------------------------------------------------------------------------
# datapath
# ------------------------------------------------------------------------------------------------
@main.command("datapath")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the demo layer.")
@click.option("--batch", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--acc-bits",
    type=click.IntRange(*ACC_BITS),
    default=16,
    show_default=True,
    help="Width of the narrow accumulator designs.",
)
@click.option(
    "--tile-rows",
    type=click.IntRange(1, MAX_TILE_ROWS),
    default=16,
    show_default=True,
    help="Rows of the systolic column in the tiled design.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    callback=_out,
    help="Also write the results as JSON (atomically).",
)
@_guard
def datapath(seed: int, batch: int, acc_bits: int, tile_rows: int, json_path: str | None) -> None:
    """Datapath demo: one conv layer on several accumulator and scale-register designs."""
    from hwsim import api, report

    res = api.datapath(seed, batch, acc_bits, tile_rows, report=json_path)
    click.echo(report.datapath_table(res))
    if json_path:
        click.echo(f"\nwrote {json_path}")


# ------------------------------------------------------------------------------------------------
# network commands
# ------------------------------------------------------------------------------------------------
def _scheme_options(f):
    opts = [
        click.option(
            "--acc-bits",
            type=click.IntRange(*ACC_BITS),
            default=32,
            show_default=True,
            help="Accumulator width (bits).",
        ),
        click.option(
            "--overflow",
            type=click.Choice(_values(Overflow)),
            default="wrap",
            show_default=True,
            help="Accumulator overflow mode.",
        ),
        click.option(
            "--order",
            type=click.Choice(_values(ReductionOrder)),
            default="sequential",
            show_default=True,
            help="Reduction order of the accumulator: sequential (output-stationary PE, CPU) or "
            "tiled (weight-stationary array: tiles of --tile-rows products summed in the array, "
            "then accumulated).",
        ),
        click.option(
            "--tile-rows",
            type=click.IntRange(0, MAX_TILE_ROWS),
            default=0,
            show_default=True,
            help="Rows of the weight-stationary array (products per tile) for --order tiled.",
        ),
        click.option(
            "--tile-bits",
            type=click.IntRange(0, ACC_BITS[1]),
            default=0,
            show_default=True,
            callback=_tile_bits,
            help="Width of the in-array partial sum for --order tiled, with the accumulator's "
            "overflow rule (0: --acc-bits, else 8..64; Gemmini: 20 with a 32-bit accumulator).",
        ),
        click.option(
            "--register",
            type=click.Choice(_values(ScaleKind)),
            default="ort",
            show_default=True,
            help="Requantization semantics (scale register).",
        ),
        click.option(
            "--rounding",
            type=click.Choice(_values(RoundingMode)),
            default="half_away",
            show_default=True,
            help="pow2 register rounding.",
        ),
        click.option(
            "--weight-mode", type=click.Choice(WEIGHT_MODES), default="symmetric", show_default=True
        ),
        click.option(
            "--granularity",
            type=click.Choice(GRANULARITIES),
            default=None,
            help="Override the scheme's weight granularity.",
        ),
        click.option(
            "--calib-method",
            type=click.Choice(CALIB_METHODS),
            default="minmax",
            show_default=True,
            help="Static activation range method.",
        ),
        click.option(
            "--percentile",
            type=click.FloatRange(50, 100, min_open=True),
            default=99.99,
            show_default=True,
        ),
        click.option(
            "--s-max",
            type=click.IntRange(0, 16),
            default=4,
            show_default=True,
            help="Largest per-sample shift (per-sample-shift scheme).",
        ),
        click.option(
            "--shift-base",
            type=click.Choice(SHIFT_BASES),
            default="static",
            show_default=True,
            help="per-sample-shift's per-tensor base: calibrated (static), or each batch's "
            "per-tensor range at run time through the integer reciprocal unit (runtime, the "
            "FQT paper's hardware; no calibration). docs/numerics.md eq. 17-19.",
        ),
        click.option(
            "--nonlinear",
            type=click.Choice(NONLINEARS),
            default="float",
            show_default=True,
            help="Softmax, GELU and LayerNorm: float between DequantizeLinear and "
            "QuantizeLinear (as onnxruntime runs them), or integer-only (I-BERT's kernels, "
            "docs/numerics.md); per layer with --layer NAME:nonlinear=integer.",
        ),
        click.option(
            "--first-last-bits",
            type=click.IntRange(*BITS),
            default=None,
            help="Weight/input width of the first and last layers.",
        ),
        click.option(
            "--batch-size", type=click.IntRange(1, MAX_BATCH), default=256, show_default=True
        ),
        click.option(
            "--bn-fold",
            type=click.Choice(BN_FOLDS),
            default="weights",
            show_default=True,
            help="Fold BatchNorm into the weights, or into the per-channel scale register.",
        ),
        click.option(
            "--data-free-range",
            type=click.Choice(DATA_FREE_RANGES),
            default="sound",
            show_default=True,
            help="Data-free range after a BatchNorm: sound = [min(beta-n|gamma|), "
            "max(beta+n|gamma|)] (every channel within n sigma); official = the PSGD code's "
            "[0, max(beta+n*gamma)] with signed gamma, for BN->ReLU only (docs/networks.md).",
        ),
        click.option(
            "--layer",
            "layers",
            multiple=True,
            metavar="NAME:FIELD=V[,FIELD=V]",
            help="Per-layer override, e.g. '/0/Conv:wbits=8,acc_bits=24' or "
            "'/0/Conv:order=tiled,tile_rows=32,tile_bits=20' (repeatable).",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


_INT_FIELDS = ("wbits", "abits", "acc_bits", "s_max", "tile_rows", "tile_bits")
_FLOAT_FIELDS = ("percentile", "bn_sigmas")


def parse_overrides(specs) -> dict:
    """``NAME:field=value[,field=value]`` -> {NAME: {field: value}} (the layer name may itself
    contain ':'; the last ':' separates it)."""
    out: dict = {}
    for spec in specs:
        name, sep, body = spec.rpartition(":")
        if not sep or not name or not body:
            raise click.BadParameter(
                f"expected NAME:FIELD=VALUE[,...], got {spec!r}", param_hint="--layer"
            )
        fields = out.setdefault(name, {})
        for item in body.split(","):
            k, eq, v = item.partition("=")
            if not eq:
                raise click.BadParameter(f"expected FIELD=VALUE in {spec!r}", param_hint="--layer")
            k = k.strip().replace("-", "_")
            try:
                fields[k] = (
                    int(v) if k in _INT_FIELDS else float(v) if k in _FLOAT_FIELDS else v.strip()
                )
            except ValueError:
                raise click.BadParameter(
                    f"{k} must be a number in {spec!r}", param_hint="--layer"
                ) from None
    return out


_SCHEME_FIELDS = (
    "bn_fold",
    "data_free_range",
    "acc_bits",
    "overflow",
    "order",
    "tile_rows",
    "tile_bits",
    "register",
    "rounding",
    "weight_mode",
    "calib_method",
    "percentile",
    "s_max",
    "shift_base",
    "nonlinear",
    "first_last_bits",
)


def _scheme_kw(kw: dict) -> dict:
    """The scheme options of :func:`_scheme_options`, popped from ``kw``, as api keywords."""
    out = {"overrides": parse_overrides(kw.pop("layers"))}
    out.update((k, kw.pop(k)) for k in _SCHEME_FIELDS)
    g = kw.pop("granularity")
    if g is not None:
        out["granularity"] = g
    return out


def _accel_options(f):
    """--config / --array / --dataflow: the accelerator the run is costed on."""
    opts = [
        click.option(
            "--config",
            "accel_config",
            type=click.Path(dir_okay=False),
            default=None,
            help="Accelerator config for the cost figures (see `hwsim cost`).",
        ),
        click.option("--array", default=None, help="Array size ROWSxCOLS (default 32x32)."),
        click.option("--dataflow", type=click.Choice(_values(Dataflow)), default=None),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _accelerator(kw: dict):
    from hwsim import api

    return api.accelerator(kw.pop("accel_config"), kw.pop("array"), kw.pop("dataflow"))


SCHEMES_HELP = ", ".join(PRESETS)


@main.command()
@click.option("--model", default="rescnn", show_default=True, help="Shipped model or ONNX path.")
@click.option("--data", default="digits", show_default=True)
@click.option("--calib", default="digits-train", show_default=True)
@click.option(
    "--wbits",
    default=None,
    callback=_bits_list,
    help="Weight widths, e.g. 8,4 (default 8,4).",
)
@click.option(
    "--abits",
    default=None,
    callback=_bits_list,
    help="Activation widths, zipped with --wbits (default 8,4 for a CNN, 8,8 for a "
    "transformer: W8A8 and W4A8).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=_out, default=None)
@_guard
def demo(model, data, calib, wbits, abits, json_path):
    """The main job: a shipped model on digits, float vs integer under several schemes. A CNN
    (rescnn, mlp, silucnn): per-tensor / per-channel / per-sample / per-sample-shift and narrow
    accumulators; a transformer (vit): per-tensor / per-channel / per-token / per-token-shift,
    each with float and with integer-only (I-BERT) softmax, GELU and LayerNorm."""
    from hwsim import api, report
    from hwsim.graph import import_model

    transformer = api.is_transformer(import_model(api.resolve_model(model)))
    click.echo(report.demo_header(model, data, calib, transformer) + "\n")
    _first_run_note()
    doc = api.demo(model, data, calib, wbits, abits, report=json_path)
    click.echo(report.compare_table(doc["rows"]))
    if json_path:
        click.echo(f"\nwrote {json_path}")


@main.command("quantize")
@click.argument("model")
@click.option("--scheme", default="per-tensor", show_default=True, help=SCHEMES_HELP)
@click.option("--wbits", type=click.IntRange(*BITS), default=8, show_default=True)
@click.option("--abits", type=click.IntRange(*BITS), default=8, show_default=True)
@click.option("--calib", default=None, help="Calibration data: built-in name or .npz.")
@click.option(
    "--input-range",
    default=None,
    callback=_input_range,
    help="LO,HI of the input (data-free scheme).",
)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(dir_okay=False), callback=_out
)
@_scheme_options
@_guard
def quantize_cmd(model, scheme, wbits, abits, calib, input_range, out, **kw):
    """Quantize a float ONNX MODEL with a scheme and write the quantized ONNX file."""
    from hwsim import api, report

    batch = kw.pop("batch_size")
    program = api.quantize_model(
        model,
        scheme,
        calib=calib,
        out=out,
        input_range=input_range,
        batch_size=batch,
        wbits=wbits,
        abits=abits,
        **_scheme_kw(kw),
    )
    click.echo(report.quantize_summary(program, model, out))


def _isa_option(f):
    return click.option(
        "--isa",
        type=click.Choice(ISA_CHOICES),
        default="exact",
        show_default=True,
        help="Dot-product semantics: exact integer math (VNNI/AMX, ARM, accelerators); avx2: "
        "onnxruntime on x86 without VNNI, uint8 x int8 pairs saturated to int16, bit for bit; "
        "auto: what onnxruntime does on this CPU.",
    )(f)


def _seed_option(f):
    return click.option(
        "--seed",
        type=SEED,
        default=0,
        show_default=True,
        help="Seed of stochastic rounding (--rounding stochastic with a pow2 register): one "
        "generator per layer and sample, so results do not depend on --batch-size.",
    )(f)


_tflite_kernels_option = click.option(
    "--tflite-kernels",
    type=click.Choice(["xnnpack", "optimized", "reference"]),
    default=None,
    help="LiteRT CPU kernels whose integer results a .tflite model matches: xnnpack (default: "
    "the interpreter's default, XNNPACK delegate), optimized (builtin kernels without "
    "delegates), reference (BUILTIN_REF).",
)


@main.command("run")
@click.argument("model")
@click.option("--data", required=True, help="Built-in data set name or .npz with x (and y).")
@click.option(
    "--report", type=click.Path(dir_okay=False), callback=_out, default=None, help="JSON report."
)
@click.option(
    "--save-outputs",
    type=click.Path(dir_okay=False),
    callback=_out,
    default=None,
    help="Write the model's final outputs (.npz, under the output name; float32, or the "
    "output's own dtype, e.g. int32/uint8, for QOperator models).",
)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=256, show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
@_isa_option
@_seed_option
@_tflite_kernels_option
@_accel_options
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="Split the data by batch across a Dask LocalCluster of this many processes (one "
    "thread each); the report is the same. Needs pip install -e '.[dask]'.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Split the data by batch across the Dask cluster at ADDRESS (tcp://host:8786).",
)
@click.option(
    "--partials/--no-partials",
    default=True,
    show_default=True,
    help="Track every partial sum's extremes (the 'need' column); --no-partials runs about "
    "1.4-1.9x faster and reports the final sums' bits instead (the report says so).",
)
@click.option(
    "--outputs-only",
    is_flag=True,
    help="Integer outputs and accuracy only, at onnxruntime's speed: no float reference and "
    "no per-layer statistics (the layers whose contract is an onnxruntime QOperator kernel's "
    "run as that kernel; the same integers).",
)
@_guard
def run_cmd(
    model,
    data,
    report,
    save_outputs,
    batch_size,
    progress,
    isa,
    seed,
    tflite_kernels,
    workers,
    scheduler,
    partials,
    outputs_only,
    **kw,
):
    """Run a quantized MODEL (hwsim, QDQ, QOperator, Brevitas QONNX/QCDQ ONNX or int8 .tflite)
    on DATA; float vs integer."""
    from hwsim import api

    if progress is None:
        progress = sys.stderr.isatty()
    _first_run_note()
    rep = api.run(
        model,
        data,
        batch_size=batch_size,
        report=report,
        save_outputs=save_outputs,
        progress=progress,
        accelerator=_accelerator(kw),
        isa=isa,
        seed=seed,
        tflite_kernels=tflite_kernels,
        outputs_only=outputs_only,
        partials=partials,
        **_dask_kw(workers, scheduler),
    )
    click.echo(rep.table())
    if workers or scheduler:
        click.echo(f"ran on {_where(workers, scheduler)}, batches split across the workers")
    for path in (report, save_outputs):
        if path:
            click.echo(f"wrote {path}")


@main.command()
@click.argument("model")
@click.option("--data", required=True)
@click.option("--calib", default=None, help="Calibration data (default: DATA itself).")
@click.option(
    "--schemes",
    default="per-tensor,per-channel,per-sample,per-sample-shift",
    show_default=True,
    help=SCHEMES_HELP,
)
@click.option("--wbits", default="8,6,4", callback=_bits_list, show_default=True)
@click.option("--abits", default="8", callback=_bits_list, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=_out, default=None)
@click.option(
    "--plot", type=click.Path(dir_okay=False), callback=_out, default=None, help="PNG plot path."
)
@click.option(
    "--pareto",
    type=click.Path(dir_okay=False),
    callback=_out,
    default=None,
    help="PNG plot of accuracy vs energy per sample, with the Pareto front.",
)
@_scheme_options
@_isa_option
@_seed_option
@_tflite_kernels_option
@_accel_options
@_guard
def compare(
    model,
    data,
    calib,
    schemes,
    wbits,
    abits,
    json_path,
    plot,
    pareto,
    isa,
    seed,
    tflite_kernels,
    **kw,
):
    """Sweep schemes x bit widths on MODEL: table (with energy), JSON, plots. An already
    quantized MODEL (QDQ, Brevitas, .tflite) gets its own quantization as the first row, then
    hwsim's schemes on its dequantized float network."""
    from hwsim import api, report

    accel = _accelerator(kw)
    batch = kw.pop("batch_size")
    names = tuple(s.strip() for s in schemes.split(",") if s.strip())
    rows = api.compare(
        model,
        data,
        names,
        wbits,
        abits,
        calib=calib,
        report=json_path,
        plot=plot,
        batch_size=batch,
        accelerator=accel,
        pareto=pareto,
        isa=isa,
        seed=seed,
        tflite_kernels=tflite_kernels,
        **_scheme_kw(kw),
    )
    click.echo(report.compare_table(rows))
    if calib is None:
        click.echo("note: calibrated on the evaluation data itself (pass --calib to separate)")
    for path in (json_path, plot, pareto):
        if path:
            click.echo(f"wrote {path}")


def _dask_kw(workers, scheduler) -> dict:
    """``workers`` / ``scheduler`` as api keywords (only when given: at most one)."""
    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers or --scheduler, not both")
    return {k: v for k, v in (("workers", workers), ("scheduler", scheduler)) if v is not None}


def _where(workers, scheduler) -> str:
    if scheduler:
        return f"the Dask cluster at {scheduler}"
    return f"a Dask LocalCluster of {workers} worker process(es)" if workers else "this process"


@main.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="Run the points on a Dask LocalCluster of this many processes (one thread each). "
    "Needs pip install -e '.[dask]'.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run the points on the Dask cluster at ADDRESS (tcp://host:8786).",
)
@click.option(
    "--results",
    type=click.Path(file_okay=False),
    default=None,
    help="Results folder, one JSON record per point (default: the spec's [sweep] results).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=_out, default=None)
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False), callback=_out, default=None,
    help="All points as CSV.",
)  # fmt: skip
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    callback=_out,
    default=None,
    help="PNG: accuracy vs energy and vs cycles per sample, with the Pareto fronts.",
)
@click.option("--progress/--no-progress", default=None, help="A line per finished point.")
@_guard
def sweep_cmd(spec, workers, scheduler, results, json_path, csv_path, plot, progress):
    """Run the sweep SPEC (TOML: models, data, axes; docs/sweep.md): one record per point in
    the results folder, only the missing points run; table, JSON, CSV, Pareto plot."""
    from hwsim import api
    from hwsim.sweep import table

    if progress is None:
        progress = sys.stderr.isatty()

    def show(rec, done, total):
        if progress:
            pt = " ".join(f"{k}={v}" for k, v in rec["point"].items())
            what = "ok" if rec["status"] == "ok" else f"FAILED ({rec['error']})"
            secs = rec["timing"]["seconds"]
            click.echo(f"[{done}/{total}] {rec['model']} {pt}: {what} {secs:.2f} s", err=True)

    _first_run_note()
    doc = api.sweep(
        spec,
        results=results,
        json_path=json_path,
        csv_path=csv_path,
        plot=plot,
        on_record=show,
        **_dask_kw(workers, scheduler),
    )
    click.echo(table(doc["records"], doc["axes"]))
    failed = sum(r["status"] != "ok" for r in doc["records"])
    click.echo(
        f"{len(doc['records'])} points: {doc['ran']} run on {_where(workers, scheduler)}, "
        f"{doc['reused']} from {doc['results']}" + (f", {failed} failed" if failed else "")
    )
    if doc["lost"]:
        click.echo(
            f"{len(doc['lost'])} point(s) did not finish (their workers died): run the sweep "
            "again to finish them"
        )
    for path in (json_path, csv_path, plot):
        if path:
            click.echo(f"wrote {path}")
    if doc["lost"]:
        raise CliError(f"{len(doc['lost'])} point(s) did not finish")
    if failed:  # recorded with their errors (the table); a script must see it
        raise CliError(f"{failed} point(s) failed (their errors are in the table and records)")


@main.command("cost")
@click.argument("model_or_topology")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Accelerator config (INI/TOML; SCALE-Sim .cfg fields are read too).",
)
@click.option("--array", default=None, help="Array size ROWSxCOLS, e.g. 32x32.")
@click.option("--dataflow", type=click.Choice(_values(Dataflow)), default=None)
@click.option(
    "--batch",
    type=click.IntRange(1, MAX_BATCH),
    default=1,
    show_default=True,
    help="Samples per inference (models only).",
)
@click.option(
    "--wbits",
    type=click.IntRange(*BITS),
    default=None,
    help="Weight width for float models and topologies.",
)
@click.option("--abits", type=click.IntRange(*BITS), default=None)
@click.option("--acc-bits", type=click.IntRange(*ACC_BITS), default=None)
@click.option(
    "--bandwidth-mode",
    type=click.Choice(["calc", "user"]),
    default=None,
    help="SCALE-Sim's InterfaceBandwidth: calc (DRAM as fast as needed, no stalls; the "
    "default) or user (--bandwidth words/cycle per operand, stalls).",
)
@click.option(
    "--bandwidth",
    type=click.IntRange(1, 1 << 20),
    default=None,
    help="DRAM words/cycle per operand in user mode (default: the config's).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=_out, default=None)
@click.option(
    "--plot", type=click.Path(dir_okay=False), callback=_out, default=None, help="PNG plot path."
)
@_guard
def cost_cmd(
    model_or_topology,
    config,
    array,
    dataflow,
    batch,
    wbits,
    abits,
    acc_bits,
    bandwidth_mode,
    bandwidth,
    json_path,
    plot,
):
    """Cycles, traffic and energy of a model or SCALE-Sim topology CSV on an accelerator."""
    from hwsim import api

    if bandwidth is not None and bandwidth_mode != "user":
        raise click.UsageError(
            "--bandwidth is the interface of USER bandwidth mode: add --bandwidth-mode user "
            "(calc mode fetches as fast as needed)"
        )

    rep = api.cost(
        model_or_topology,
        config,
        array,
        dataflow,
        batch,
        json_path,
        plot,
        weight_bits=wbits,
        act_bits=abits,
        acc_bits=acc_bits,
        bandwidth_mode=bandwidth_mode,
        dram_words_per_cycle=bandwidth,
    )
    click.echo(rep.table())
    for path in (json_path, plot):
        if path:
            click.echo(f"wrote {path}")


@main.command("train")
@click.argument("arch")
@click.option(
    "--data",
    default="digits-train",
    show_default=True,
    help="Training data: built-in name or .npz with x and y.",
)
@click.option("--optimizer", type=click.Choice(["sgd", "psgd"]), default="sgd", show_default=True)
@click.option(
    "--target-bits",
    type=click.IntRange(*TARGET_BITS),
    default=4,
    show_default=True,
    help="PSGD: the weight grid the gradients are scaled toward.",
)
@click.option("--lambda-s", type=float, default=None, help="PSGD scale (default: the official).")
@click.option("--scaling", type=click.Choice(SCALINGS), default="official", show_default=True)
@click.option("--epochs", type=click.IntRange(1, 100000), default=30, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(dir_okay=False), callback=_out_parents
)
@_guard
def train_cmd(arch, data, optimizer, target_bits, lambda_s, scaling, epochs, lr, seed, out):
    """Train a shipped ARCH (mlp, rescnn) with SGD or PSGD and export float ONNX (needs the
    'train' extra: pip install -e '.[train]', which pins torch==2.13.0)."""
    from hwsim import api, report

    rec = api.train(
        arch,
        data=data,
        optimizer=optimizer,
        target_bits=target_bits,
        lambda_s=lambda_s,
        scaling=scaling,
        epochs=epochs,
        lr=lr,
        seed=seed,
        out=out,
    )
    click.echo(report.train_summary(rec, data, out))


def _study_outputs(workdir_help: str, plots: str):
    """--workdir / --report / --plot of a study command, each checked before any work."""
    opts = [
        click.option(
            "--workdir",
            type=click.Path(file_okay=False),
            callback=_out_dir,
            default=None,
            help=workdir_help,
        ),
        click.option("--report", type=click.Path(dir_okay=False), callback=_out, default=None),
        click.option(
            "--plot",
            "plot_dir",
            type=click.Path(file_okay=False),
            callback=_out_dir,
            default=None,
            help=f"Directory for {plots}.",
        ),
    ]

    def apply(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return apply


@main.group()
def study():
    """Reproduction studies of the papers behind hwsim."""


@study.command("psgd")
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="Built-in set with a '-train' split: digits or mnist5k.",
)
@click.option("--seeds", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--arch", default="rescnn", show_default=True)
@click.option("--epochs", type=click.IntRange(1, 100000), default=30, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--lambda-s", type=float, default=None)
@click.option("--target-bits", type=click.IntRange(*TARGET_BITS), default=4, show_default=True)
@click.option("--scaling", type=click.Choice(SCALINGS), default="official", show_default=True)
@_study_outputs(
    "Models and per-run results (reused on rerun). Default hwsim-study-psgd-DATA.",
    "accuracy_vs_bits.png and weight_histogram.png",
)
@_guard
def study_psgd_cmd(
    data, seeds, arch, epochs, lr, lambda_s, target_bits, scaling, workdir, report, plot_dir
):
    """SGD vs PSGD models under layer-wise (data-free and calibrated) and channel-wise
    quantization on the emulated datapath; mean ± std over seeds."""
    from hwsim import api

    doc = api.study(
        data=data, seeds=seeds, arch=arch, epochs=epochs, lr=lr, lambda_s=lambda_s,
        target_bits=target_bits, scaling=scaling, workdir=workdir, report=report,
        plot_dir=plot_dir, log=click.echo,
    )  # fmt: skip
    click.echo(api.study_table(doc))
    for path in (report, plot_dir):
        if path:
            click.echo(f"wrote {path}")


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def _int_list(what: str, lo: int, hi: int):
    """A callback for a comma-separated list of ints in ``[lo, hi]``: a usage error naming the
    flag (click adds it) and the allowed values."""

    def cb(ctx, param, value):
        if value is None:
            return None
        try:
            out = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            raise click.BadParameter(
                f"expected comma-separated {what} in [{lo}, {hi}], got {value!r}"
            ) from None
        bad = [v for v in out if not lo <= v <= hi]
        if bad:
            raise click.BadParameter(f"{what} must be in [{lo}, {hi}], got {bad[0]}")
        return out

    return cb


def _quantizers(ctx, param, value):
    out = tuple(v.strip() for v in str(value).split(","))
    bad = [v for v in out if v not in GRAD_QUANTIZERS]
    if bad:
        raise click.BadParameter(
            f"unknown gradient quantizer {bad[0]!r}: use one or more of "
            f"{', '.join(GRAD_QUANTIZERS)} (comma-separated)"
        )
    return out


@study.command("fqt")
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="The cnn task's built-in set with a '-train' split: digits or mnist5k.",
)
@click.option(
    "--task", type=click.Choice(["cnn", "transformer", "both"]), default="both", show_default=True
)
@click.option(
    "--seeds",
    type=click.IntRange(1, 100),
    default=None,
    help=f"Default {FQT_SEEDS} (--quick: {FQT_QUICK['seeds']}).",
)
@click.option(
    "--epochs",
    type=click.IntRange(1, 100000),
    default=None,
    help="Epochs of every run (default: "
    + ", ".join(f"{t} {d['epochs']}" for t, d in FQT_TASK_DEFAULTS.items())
    + "; --quick: "
    + ", ".join(f"{t} {e}" for t, e in FQT_QUICK["epochs"].items())
    + ").",
)
@click.option(
    "--grad-bits",
    callback=_int_list("gradient bit widths", *GRAD_BITS_RANGE),
    default=None,
    help=f"Gradient widths in [{GRAD_BITS_RANGE[0]}, {GRAD_BITS_RANGE[1]}] "
    f"(default {_csv(FQT_GRAD_BITS)}; --quick: {_csv(FQT_QUICK['grad_bits'])}).",
)
@click.option(
    "--quantizers",
    callback=_quantizers,
    default=",".join(GRAD_QUANTIZERS),
    show_default=True,
    help=f"Gradient quantizers, comma-separated: {', '.join(GRAD_QUANTIZERS)}.",
)
@click.option(
    "--s-max-sweep",
    callback=_int_list("S_max values", *S_MAX_RANGE),
    default=None,
    help=f"PSQ-shift S_max values in [{S_MAX_RANGE[0]}, {S_MAX_RANGE[1]}] "
    f"(default {_csv(FQT_S_MAX_SWEEP)}; --quick: {_csv(FQT_QUICK['s_max_sweep'])}).",
)
@click.option(
    "--s-max-bits",
    callback=_int_list("gradient bit widths", *GRAD_BITS_RANGE),
    default=None,
    help=f"Gradient widths of the S_max sweep (default {_csv(FQT_S_MAX_BITS)}).",
)
@click.option("--variance/--no-variance", default=True, show_default=True,
              help="Measure the gradient variance of every quantizer and width.")  # fmt: skip
@click.option("--quick", is_flag=True, help="A smoke run of about a minute.")
@_study_outputs(
    "Per-run results (reused on rerun). Default hwsim-study-fqt-DATA[-quick].",
    "accuracy_vs_bits.png, variance_vs_bits.png and s_max_sweep.png",
)
@_guard
def study_fqt_cmd(data, task, seeds, epochs, grad_bits, quantizers, s_max_sweep, s_max_bits,
                  variance, quick, workdir, report, plot_dir):  # fmt: skip
    """Fully quantized training (the FQT paper): exact, QAT and 8-bit-forward training with
    PTQ / PSQ / BHQ / PSQ-shift gradients at several widths, on a small CNN and a small
    transformer; mean ± std over seeds, an S_max sweep and the gradient variance (needs the
    'train' extra)."""
    from hwsim import api

    doc = api.study_fqt(
        data=data, task=task, seeds=seeds, epochs=epochs, grad_bits=grad_bits,
        quantizers=quantizers, s_max_sweep=s_max_sweep, s_max_bits=s_max_bits,
        variance=variance, quick=quick, workdir=workdir, report=report, plot_dir=plot_dir,
        log=click.echo,
    )  # fmt: skip
    click.echo(api.study_fqt_table(doc))
    for path in (report, plot_dir):
        if path:
            click.echo(f"wrote {path}")


@main.command()
@_guard
def models():
    """List the shipped models."""
    from hwsim import api, report

    text = report.models_table(api.shipped_models())
    if text:
        click.echo(text)


@main.command("trace")
@click.argument("model")
@click.option("--data", default="digits", show_default=True, help="Built-in data set or .npz.")
@click.option(
    "--index",
    "indices",
    multiple=True,
    metavar="I|A:B",
    help="Sample(s) to trace: an index or a range A:B (end exclusive); repeatable (default 0).",
)
@click.option("--only", multiple=True, metavar="NODE", help="Trace only these layers (repeatable).")
@click.option(
    "--scheme", default=None, help=f"A float MODEL's scheme (default per-tensor): {SCHEMES_HELP}."
)
@click.option("--wbits", type=click.IntRange(*BITS), default=8, show_default=True)
@click.option("--abits", type=click.IntRange(*BITS), default=8, show_default=True)
@click.option(
    "--calib", default="digits-train", show_default=True, help="A float MODEL's calibration data."
)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(file_okay=False), help="Trace folder."
)
@_isa_option
@_scheme_options
@_guard
def trace_cmd(model, data, indices, only, scheme, wbits, abits, calib, out, isa, **kw):
    """Golden vectors of MODEL for RTL: per layer the integer inputs, weights, bias, raw
    accumulators, scale registers and outputs of the chosen samples, as .npy and $readmemh
    hex, with manifest.json (docs/trace.md). A float MODEL is quantized first (--scheme and
    the scheme options); a quantized one is traced as it is."""
    from hwsim import api

    batch = kw.pop("batch_size")
    doc = api.trace(
        model, out, data, indices, only, scheme, calib, batch, isa=isa, wbits=wbits, abits=abits,
        **_scheme_kw(kw),
    )  # fmt: skip
    mac = [layer for layer in doc["layers"] if "acc" in layer]
    replayed = sum(layer["replayed"] for layer in mac)
    what = f"{len(mac)} MAC, {replayed} replayed from their registers"
    pss = sum("shift_acc" in layer for layer in doc["layers"])
    if pss:
        what += f", {pss} per-sample-shift accumulators (eq. 13-14)"
    if doc["scheme"] == {"name": "qoperator"}:
        what = "QOperator nodes with integer outputs; no accumulators"
    click.echo(
        f"wrote {out}: {len(doc['layers'])} layers ({what}), samples {doc['indices']} of "
        f"{doc['data']}, {len(doc['files'])} files"
    )


@main.command("diff")
@click.argument("a", type=click.Path(exists=True, file_okay=False))
@click.argument("b", required=False, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--against",
    type=click.Choice(["onnxruntime"]),
    default=None,
    help="Instead of B: run A's quantized model in onnxruntime with every traced tensor "
    "exposed as an output, on A's samples.",
)
@click.option("--model", default=None, help="--against: the model file (default: A's).")
@click.option("--data", default=None, help="--against: the data set (default: A's).")
@click.option(
    "--save-dumps",
    type=click.Path(file_okay=False),
    default=None,
    help="--against: keep onnxruntime's tensors in this dumps folder.",
)
@_guard
def diff_cmd(a, b, against, model, data, save_dumps):
    """First divergence of trace A (a folder `hwsim trace` wrote) and B: another trace, or a
    dumps folder of per-layer .npy files named by ONNX tensor (docs/trace.md), or onnxruntime
    (--against onnxruntime). Reports the first layer in topological order whose accumulators or
    output differ, the first differing element, how many differ and a cause where the data
    shows one. Exit 0: identical, 1: they differ (or an error, printed as 'Error: ...')."""
    from hwsim import api

    d = api.diff(a, b, against, model, data, save_dumps)
    if d is None:
        click.echo(f"no divergence: every layer of {a} matches {b or against}")
        return
    click.echo(d.text())
    sys.exit(1)


if __name__ == "__main__":
    main()
