"""The ``quantfw`` command line.

Heavy work is imported inside each command so that ``quantfw --help`` stays instant and loads no
deep-learning framework.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from .version import __version__

__all__ = ["main"]


def _parse_algorithm(text: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,key=value`` (values parsed as JSON where they parse)."""
    name, _, rest = text.partition(":")
    return name.strip(), _options((rest,), "--algorithm")


def _registry():
    """The plugins' registry, without the plugins named by ``--disable-plugin``.  A plugin left
    out (failed, or clashing with a component name already taken) is reported as a warning on
    stderr, and the rest keep working."""
    from .plugins import get_plugin_manager, get_registry

    ctx = click.get_current_context(silent=True)
    disabled = (ctx.find_root().obj or {}).get("disabled") if ctx is not None else None
    if disabled:  # loaded here, not in cli(), so that `quantfw ... CMD --help` loads nothing
        get_plugin_manager(disabled=disabled)
    return get_registry()


def _fail(exc: Exception) -> None:
    """Report a user's mistake as one line, in command-line terms; where the user's own code
    failed (a ``--calib module:function``), its traceback goes to stderr under ``--verbose``."""
    from .errors import QuantfwError

    if not isinstance(exc, QuantfwError):
        raise click.ClickException(str(exc)) from exc
    message = exc.cli_message()
    if exc.show_cause and exc.__cause__ is not None:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and (ctx.find_root().obj or {}).get("verbose"):
            import traceback

            click.echo("".join(traceback.format_exception(exc.__cause__)).rstrip(), err=True)
        else:
            message += " (run with --verbose for the traceback)"
    raise click.ClickException(message) from exc


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that report a user's mistake (a bad model, file, option or installation):
    shown as one line.  Anything else is a bug in quantfw or a plugin and keeps its traceback."""
    from .errors import QuantfwError

    return (QuantfwError, ValueError, OSError)


def _options(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (each may hold several, comma-separated) as a dict, values parsed as
    JSON where they parse."""
    options: dict[str, Any] = {}
    for pair in pairs:
        for part in filter(None, pair.split(",")):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise click.BadParameter(f"{part!r} is not KEY=VALUE", param_hint=flag)
            try:
                options[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                options[key.strip()] = value
    return options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantfw")
@click.option(
    "--disable-plugin",
    "disabled",
    multiple=True,
    metavar="NAME",
    help="Do not load this plugin (entry-point or distribution name); repeatable. "
    "Also: QUANTFW_DISABLE_PLUGINS=a,b.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, disabled: tuple[str, ...], quiet: bool, verbose: bool) -> None:
    """Quantize trained networks and deliver them to real hardware targets."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"quiet": quiet, "verbose": verbose, "disabled": disabled}


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=True, path_type=Path))
@click.option(
    "-t",
    "--target",
    default="generic",
    show_default=True,
    help="Target name (see `quantfw targets`).",
)
@click.option(
    "--calib", "calib", help="Calibration data: file.npz, a folder of .npy, or module:function."
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Where the backend writes the artifact."
)
@click.option(
    "-a",
    "--algorithm",
    "algorithms",
    multiple=True,
    metavar="NAME[:k=v,...]",
    help="Algorithm to run (repeatable), e.g. percentile:percentile=99.9.",
)
@click.option(
    "--recipe-out",
    type=click.Path(path_type=Path),
    help="Save the recipe (NAME.json + NAME.safetensors).",
)
@click.option(
    "--ignore",
    multiple=True,
    metavar="PATTERN",
    help="Keep nodes matching this name/glob in float.",
)
@click.option(
    "--ignore-op", multiple=True, metavar="KIND", help="Keep every node of this op kind in float."
)
@click.option(
    "--weight-bits", type=int, help="Integer weight bits for every quantized layer (8, 4, 3, 2)."
)
@click.option("--dynamic", is_flag=True, help="Quantize activations dynamically at run time.")
@click.option(
    "--overrides",
    "overrides_file",
    type=click.Path(exists=True, path_type=Path),
    help="JSON file of planner overrides (see quantfw.planner.Overrides).",
)
@click.option(
    "-F",
    "--frontend-option",
    "frontend_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for the frontend (repeatable), e.g. threads=2 for the ONNX frontend.",
)
@click.option(
    "-B",
    "--backend-option",
    "backend_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for the backend (repeatable), e.g. fmt=qoperator for ONNX Runtime.",
)
@click.option(
    "--batch-size",
    default=32,
    type=click.IntRange(min=1),
    show_default=True,
    help="Calibration samples per model run; batches over the activation memory budget "
    "(QUANTFW_CALIB_MEMORY, default 2GiB) run in chunks.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def quantize(
    ctx: click.Context,
    model: Path,
    target: str,
    calib: str | None,
    output: Path | None,
    algorithms: tuple[str, ...],
    recipe_out: Path | None,
    ignore: tuple[str, ...],
    ignore_op: tuple[str, ...],
    weight_bits: int | None,
    dynamic: bool,
    overrides_file: Path | None,
    frontend_options: tuple[str, ...],
    backend_options: tuple[str, ...],
    batch_size: int,
    as_json: bool,
) -> None:
    """Quantize MODEL for a target and write its recipe and artifact."""
    from .calibration import CalibrationFile
    from .fileio import check_not_input
    from .outputs import check_output_path
    from .pipeline import quantize as run
    from .recipe import Recipe

    try:
        # before any work: the outputs can be written where they were asked for
        if output is not None:
            check_output_path(output, "output (-o)")
        if recipe_out is not None:
            for path in Recipe.paths(recipe_out):
                check_output_path(path, "recipe (--recipe-out)")
        overrides: dict[str, Any] = {}
        if overrides_file is not None:
            overrides = json.loads(overrides_file.read_text(encoding="utf-8"))
            if not isinstance(overrides, dict):
                raise ValueError(f"{overrides_file}: overrides must be a JSON object")
        if ignore:
            overrides["ignore_patterns"] = list(overrides.get("ignore_patterns", [])) + list(ignore)
        if ignore_op:
            overrides["ignore_ops"] = list(overrides.get("ignore_ops", [])) + list(ignore_op)
        if weight_bits is not None:
            overrides["weight"] = {**overrides.get("weight", {}), "bits": weight_bits}
        if dynamic:
            overrides["dynamic"] = True
        registry = _registry()
        fe_info = registry.frontend_for(model)
        fe_options = _options(frontend_options, "--frontend-option")
        model_obj = registry.make_frontend(fe_info.name, fe_options).load(model)
        if output is not None:
            check_not_input(output, [model])
        data = CalibrationFile(calib) if calib is not None else None
        result = run(
            model_obj,
            data,
            target=target,
            algorithms=[_parse_algorithm(a) for a in algorithms],
            overrides=overrides or None,
            output=output,
            frontend=fe_info.name,
            frontend_options=fe_options,
            backend_options=_options(backend_options, "--backend-option"),
            batch_size=batch_size,
            registry=registry,
            # bars only on a terminal: a log file or CI output gets no carriage-return noise
            progress=not ctx.obj["quiet"] and not as_json and sys.stderr.isatty(),
        )
        saved = result.recipe.save(recipe_out) if recipe_out is not None else None
    except _user_errors() as exc:
        _fail(exc)
        return
    if as_json:
        doc = result.summary.to_dict()
        doc["recipe"] = [str(p) for p in saved] if saved else None
        click.echo(json.dumps(doc, indent=1))
    else:
        click.echo(result.summary.to_text(max_tensors=20 if ctx.obj["verbose"] else 0))
        if saved:
            click.echo(f"recipe: {saved[0]} + {saved[1].name}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List plugins: name, version, status (loaded / failed / blocked) and what each registers."""
    registry = _registry()
    reports = [r.to_dict() for r in registry.plugins]
    conflicts = [c.to_dict() for c in registry.conflicts]
    if as_json:
        click.echo(json.dumps({"plugins": reports, "conflicts": conflicts}, indent=1))
        return
    for r in reports:
        version = f" {r['version']}" if r.get("version") else ""
        dist = f" ({r['distribution']}{version})" if r.get("distribution") else ""
        line = f"{r['name']}{dist}: {r['status']}"
        if r.get("reason"):
            line += f" — {r['reason']}"
        click.echo(line)
        for kind, names in (r.get("registers") or {}).items():
            if names:
                click.echo(f"    {kind}: {', '.join(names)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets(as_json: bool) -> None:
    """List targets and whether this machine can run them."""
    registry = _registry()
    rows = []
    for name, spec in sorted(registry.targets.items()):
        ok, why = spec.availability()
        backends = [b.name for b in registry.backends_for(name)]
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "available": ok,
                "reason": why,
                "backends": backends,
                "origin": registry.origin("target", name),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        state = "available" if r["available"] else f"not runnable here: {r['reason']}"
        backends = ", ".join(r["backends"]) or "none (simulation only)"
        click.echo(f"{r['name']:<14} {r['description']}\n{'':<14} {state}; backends: {backends}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def algorithms(as_json: bool) -> None:
    """List algorithms by stage, with availability."""
    from .api.components import STAGE_ORDER

    registry = _registry()
    rows = []
    for stage in STAGE_ORDER:
        for name, info in sorted(registry.algorithms.items()):
            if info.stage is stage:
                ok, why = info.availability()
                rows.append(
                    {
                        "name": name,
                        "stage": stage.value,
                        "available": ok,
                        "reason": why,
                        "frontends": list(info.frontends),
                        "description": info.description,
                        "origin": registry.origin("algorithm", name),
                    }
                )
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        state = "" if r["available"] else f"  [unavailable: {r['reason']}]"
        click.echo(f"{r['stage']:<10} {r['name']:<16} {r['description']}{state}")


@cli.command()
@click.option("--calibrator", default="minmax", show_default=True, help="Calibrate algorithm.")
@click.option("--seed", default=0, show_default=True)
def demo(calibrator: str, seed: int) -> None:
    """Train a digits classifier in numpy and quantize it to every weight format (needs scikit-learn)."""
    from .demo import format_rows, run_demo

    try:
        _registry()  # the plugins, less those --disable-plugin names, for the demo's quantize
        rows = run_demo(seed=seed, calibrator=calibrator)
    except _user_errors() as exc:
        _fail(exc)
        return
    click.echo(
        "digits MLP (64-64-10), scikit-learn digits, 30% held out; target generic (simulated)"
    )
    click.echo(format_rows(rows))


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="quantfw", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
