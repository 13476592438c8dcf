"""Where command output goes: results on stdout, progress and logs on stderr, unwrapped in files.

`ssodkit evaluate … > metrics.txt` must hold the table and nothing else, and a log line read
by `grep` must not be cut in two at column 80 (rich's width when it cannot ask a terminal).
"""

from __future__ import annotations

from rich.console import Console

# Width when not on a terminal: tables take their natural width, text is never wrapped.
UNWRAPPED_WIDTH = 10_000


def console(*, stderr: bool = False, highlight: bool = True) -> Console:
    """A console for results (stdout) or logs (`stderr=True`): text is never wrapped by
    rich, and off a terminal tables take their natural width instead of 80 columns."""
    out = Console(stderr=stderr, soft_wrap=True, highlight=highlight)
    if not out.is_terminal:
        out.width = UNWRAPPED_WIDTH
    return out
