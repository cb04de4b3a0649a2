"""The `pdfnet-pipeline` command line: parses arguments and dispatches, nothing more.

Heavy imports (torch, transformers, zarr, cv2) happen inside the commands so `--help` stays light.
Stages and benchmarks are looked up by name in small registries: each names a module exposing a
`Config` dataclass and `run(config)`.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pdfnet_pipeline import config as cfgmod

app = typer.Typer(
    help="PDFNet (Patch-Depth Fusion) for dichotomous image segmentation: "
    "DAM v2 depth -> Zarr stores -> train -> eval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stage_app = typer.Typer(help="Run the stages defined in stages/NAME.toml and report progress.", no_args_is_help=True)
data_app = typer.Typer(help="Dataset manifests and the bundled generated sample dataset.", no_args_is_help=True)
model_app = typer.Typer(help="PDFNet model: parameter counts, checkpoint conversion.", no_args_is_help=True)
store_app = typer.Typer(help="Inspect and export Zarr stores.", no_args_is_help=True)
app.add_typer(stage_app, name="stage")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(store_app, name="store")

# name -> module with `Config` and `run(config)`.
STAGES = {
    "depth": "pdfnet_pipeline.depth.stage",
    "train": "pdfnet_pipeline.train.stage",
    "eval": "pdfnet_pipeline.eval.stage",
}
BENCHES = {
    "depth": "pdfnet_pipeline.bench.depth",
    "model": "pdfnet_pipeline.bench.model",
    "data": "pdfnet_pipeline.bench.data",
    "train": "pdfnet_pipeline.bench.train",
    "metrics": "pdfnet_pipeline.bench.metrics",
    "gpu": "pdfnet_pipeline.bench.gpu",
    "growth": "pdfnet_pipeline.bench.growth",
}


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _component(registry: dict[str, str], kind: str, name: str):
    if name not in registry:
        fail(f"unknown {kind} {name!r} (known: {', '.join(registry)})")
    try:
        return importlib.import_module(registry[name])
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("pdfnet_pipeline"):
            fail(f"{kind} {name!r} is not built yet ({registry[name]} does not exist)")
        raise


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a setting: key=value (TOML value), repeatable."),
]


@stage_app.command("run")
def stage_run(
    name: Annotated[str, typer.Argument(help="Stage name: depth, train or eval (stages/NAME.toml).")],
    profile: Annotated[str | None, typer.Option(help="Named override set, e.g. smoke or paper.")] = None,
    set_: SetOpt = None,
    stages_dir: Annotated[Path | None, typer.Option(help="Folder with the stage TOML files.")] = None,
    print_config: Annotated[bool, typer.Option(help="Print the resolved config and exit.")] = False,
) -> None:
    """Run stage NAME with its stages/NAME.toml settings, a profile and overrides."""
    try:
        raw = cfgmod.load_stage_dict(name, profile, set_ or [], stages_dir)
    except cfgmod.ConfigError as err:
        fail(str(err))
    module = _component(STAGES, "stage", name)
    try:
        cfg = cfgmod.from_dict(module.Config, raw)
    except cfgmod.ConfigError as err:
        fail(f"stages/{name}.toml: {err}")
    if print_config:
        typer.echo(json.dumps(cfgmod.to_dict(cfg), indent=2))
        return
    module.run(cfg)


@stage_app.command("status")
def stage_status(
    stores: Annotated[Path, typer.Option(help="Folder of split stores.")] = Path("stores"),
    runs: Annotated[Path, typer.Option(help="Folder of training runs.")] = Path("runs"),
) -> None:
    """Per split: samples done in each store; per run: last checkpoint and best score."""
    from pdfnet_pipeline.status import report

    typer.echo(report(stores, runs))


@app.command("bench")
def bench(
    name: Annotated[str, typer.Argument(help=f"Benchmark: {', '.join(BENCHES)}.")],
    set_: SetOpt = None,
) -> None:
    """Measure this machine; prints the figures next to the baseline they are compared with."""
    module = _component(BENCHES, "benchmark", name)
    try:
        cfg = cfgmod.from_dict(module.Config, cfgmod.apply_overrides({}, set_ or []))
    except cfgmod.ConfigError as err:
        fail(str(err))
    module.run(cfg)


def _register_commands() -> None:
    """Component command modules add their commands to the sub-apps above. They import only typer
    at module level, so `--help` imports neither torch nor cv2 (tests/test_light_cli.py)."""
    from pdfnet_pipeline import store_commands
    from pdfnet_pipeline.data import commands as data_commands
    from pdfnet_pipeline.eval import commands as eval_commands
    from pdfnet_pipeline.model import commands as model_commands
    from pdfnet_pipeline.serve import commands as serve_commands

    data_commands.register(data_app)
    model_commands.register(model_app)
    store_commands.register(store_app)
    eval_commands.register(app)
    serve_commands.register(app)


_register_commands()


def main() -> None:
    """Console entry: user errors (bad input, settings, files) print one line, not a traceback; a run
    stopped by a pre-emption signal prints one line and exits with preempt.EXIT_PREEMPTED (75)."""
    from pdfnet_pipeline.errors import UserError
    from pdfnet_pipeline.preempt import Preempted

    try:
        app()
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except Preempted as stop:  # progress saved: the job script requeues on this exit code
        typer.echo(f"stopped: {stop}", err=True)
        sys.exit(stop.exit_code)


if __name__ == "__main__":  # torchrun -m pdfnet_pipeline.cli ...
    main()
