"""Argument parsing shared by the `l4` command and the benchmark scripts.

A usage error is one line (the full usage is one `--help` away), and numeric options are checked
at parse time with a message that names what was expected. The servers share `--log-level` and
the log format (`configure_logging`, vLLM's: level, time, logger, message, on standard error).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(levelname)s %(asctime)s [%(name)s] %(message)s"
LOG_DATE_FORMAT = "%m-%d %H:%M:%S"


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


def add_log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help="log messages of this level and above, on standard error; info includes one "
        "access-log line per request (default: %(default)s)",
    )


def configure_logging(level: str) -> None:
    """Send every logger's records at `level` and above to standard error, in one format."""
    logging.basicConfig(
        level=level.upper(),
        format=LOG_FORMAT,
        datefmt=LOG_DATE_FORMAT,
        stream=sys.stderr,
        force=True,
    )
