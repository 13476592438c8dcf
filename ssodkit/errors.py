"""User-facing errors.

Anything a user can cause (bad file, bad flag, unknown name) raises `SsodkitError` with a
one-line message that says what is wrong and where. The CLI prints it without a traceback;
library users catch it like any exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SsodkitError(Exception):
    """An error caused by user input; its message is meant to be printed as is."""


class ConfigError(SsodkitError):
    """A configuration value is invalid."""


class DataError(SsodkitError):
    """A data file (COCO JSON, image, results JSON) is missing or malformed."""


class CapabilityError(SsodkitError):
    """A method needs a detector capability that the chosen detector lacks."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> SsodkitError:
    """Build the one-line error for an unknown registry name, with close matches first."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return SsodkitError(f"unknown {kind} '{name}'; valid: {', '.join(valid)}.{hint}")
