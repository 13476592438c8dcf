"""The `ssodkit` Typer application.

Each sub-command lives in its own module and only parses, validates and calls the library.
User errors (`SsodkitError`) are printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from ssodkit.errors import SsodkitError

BUILTIN_COMMAND_MODULES = (
    "train_cmd", "evaluate_cmd", "split_cmd", "data_cmd", "plugins_cmd", "pseudolabel_cmd",
    "mix_cmd", "stats_cmd", "report_cmd",
)


def _hide_flag_types() -> None:
    """Leave the type column of a flag's help row empty (typer ≥ 0.20 shows `<bool>` beside
    `--decode` or `--help`, which reads as if the flag took a value)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "hides_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.hides_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def build_app() -> typer.Typer:
    """A fresh app with the built-in commands and any commands plugins add."""
    import importlib

    from ssodkit.plugins import get_plugin_manager

    _hide_flag_types()

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
    manager = get_plugin_manager()
    for failure in manager.failures:  # the other plugins loaded: say which one did not
        typer.echo(f"warning: {failure}", err=True)
    manager.add_commands(app)
    return app


def error_exit(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user can fix, None for a bug (which keeps its
    traceback). An operating-system error on a path (read-only or full disk, a file where a
    folder should be) is the user's to fix, like a bad flag."""
    if isinstance(exc, SsodkitError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return None


def main() -> None:
    try:
        build_app()()
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C inside a command into a silent exit 130
            typer.echo("interrupted", err=True)
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except (SsodkitError, OSError) as exc:
        message = user_error(exc)
        if message is None:
            raise
        error_exit(message)
