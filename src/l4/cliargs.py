"""Argument parsing shared by the `l4` command and the benchmark scripts.

A usage error is one line (the full usage is one `--help` away), and numeric options are checked
at parse time with a message that names what was expected. ``exit_status`` turns L4's errors
into the commands' exit codes (the edge where exceptions become statuses).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from l4.errors import L4Error


def exit_status(command: Callable[[], int]) -> int:
    """Run ``command``: an L4 or OS error is one line and exit 2, an interrupt exit 130."""
    try:
        return command()
    except (L4Error, OSError) as exc:
        print(f"l4: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l4: interrupted", file=sys.stderr)
        return 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value
