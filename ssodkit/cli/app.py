"""The `ssodkit` Typer application.

Each sub-command lives in its own module and only parses, validates and calls the library.
User errors (`SsodkitError`) are printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys

import typer

from ssodkit.errors import SsodkitError

BUILTIN_COMMAND_MODULES = (
    "train_cmd", "evaluate_cmd", "split_cmd", "data_cmd", "plugins_cmd", "pseudolabel_cmd",
    "mix_cmd", "stats_cmd",
)


def build_app() -> typer.Typer:
    """A fresh app with the built-in commands and any commands plugins add."""
    import importlib

    from ssodkit.plugins import get_plugin_manager

    app = typer.Typer(
        name="ssodkit",
        help="Semi-supervised object detection: train, pseudo-label, mix, evaluate, diagnose.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    @app.callback(invoke_without_command=True)
    def _root(
        version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
    ) -> None:
        if version:
            from ssodkit import __version__

            typer.echo(f"ssodkit {__version__}")
            raise typer.Exit()

    for module_name in BUILTIN_COMMAND_MODULES:
        importlib.import_module(f"ssodkit.cli.{module_name}").register(app)
    get_plugin_manager().add_commands(app)
    return app


def error_exit(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def main() -> None:
    try:
        build_app()()
    except SsodkitError as exc:
        error_exit(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
