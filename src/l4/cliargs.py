"""Argument parsing shared by the `l4` command and the benchmark scripts.

A usage error is one line (the full usage is one `--help` away), and numeric options are checked
at parse time with a message that names what was expected. Output paths are checked before any
work (``output_paths``, ``check_output_file``, ``check_output_dir``), so a long run never ends in
a write error; ``-`` names standard output (``write_output``). ``--profiles-dir`` defaults from
the environment here, at the edge (``default_profiles_dir``); nothing below the CLI reads it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from l4.costmodel.profile import available_profiles
from l4.errors import ConfigError


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


# `--json -` and the like: the file name that means standard output.
STDOUT = "-"


def to_stdout(path: Path | None) -> bool:
    return path is not None and str(path) == STDOUT


def _nearest_existing(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path(path.absolute().anchor)


def check_output_file(option: str, path: Path) -> None:
    """Refuse, before any work, an output file that could not be written: a directory, a file
    without write permission, or a path whose parent cannot be created."""
    if to_stdout(path):
        return
    where = f"{option} {path}"
    if path.is_dir():
        raise ConfigError(f"{where}: is a directory, expected a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{where}: the file is not writable")
        return
    _check_creatable(where, path)


def check_output_dir(option: str, path: Path) -> None:
    """Refuse, before any work, an output directory that is a file or cannot be created."""
    where = f"{option} {path}"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where}: is a file, expected a directory")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: the directory is not writable")
    else:
        _check_creatable(where, path)


def _check_creatable(where: str, path: Path) -> None:
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise ConfigError(f"{where}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: cannot create it in {parent} (permission denied)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outputs:
    """Where a command writes (``-``: standard output); None where it writes nothing."""

    json: Path | None = None
    requests: Path | None = None
    plot: Path | None = None

    @property
    def uses_stdout(self) -> bool:
        return to_stdout(self.json) or to_stdout(self.requests)


def output_paths(
    *,
    out: Path | None,
    json: Path | None,
    requests: Path | None = None,
    json_name: str,
    plot_name: str,
    requests_name: str | None = None,
) -> Outputs:
    """The files of ``--json``, ``--requests-out`` and ``--out DIR`` (which receives
    ``json_name``, ``requests_name`` and ``plot_name`` unless the others say where), checked
    before any work so that a long run cannot end in a write error."""
    outputs = Outputs(
        json=json or (out / json_name if out else None),
        requests=requests or (out / requests_name if out and requests_name else None),
        plot=out / plot_name if out else None,
    )
    if out is not None:
        check_output_dir("--out", out)
    if to_stdout(json) and to_stdout(requests):
        raise ConfigError("only one of --json and --requests-out can be '-' (standard output)")
    for option, given, path in (
        ("--json", json, outputs.json),
        ("--requests-out", requests, outputs.requests),
        ("--out", None, outputs.plot),
    ):
        if path is not None:
            check_output_file("--out" if given is None else option, path)
    return outputs


def write_output(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` (its directory made) or to standard output for ``-``; True
    when a file was written."""
    if to_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


# --- calibration profiles: bundled, in the user profile directory, or a path ---------------------

PROFILES_DIR_ENV = "L4_PROFILES_DIR"


def default_profiles_dir(environ: Mapping[str, str]) -> Path:
    """Where user profiles live: ``$L4_PROFILES_DIR``, else ``$XDG_DATA_HOME/l4/profiles`` (an
    absolute XDG_DATA_HOME only, as the XDG spec says), else ``~/.local/share/l4/profiles``."""
    explicit = environ.get(PROFILES_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "l4" / "profiles"
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".local" / "share" / "l4" / "profiles"


def add_profile_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    default: str | None,
    environ: Mapping[str, str],
) -> None:
    """``--profile NAME|PATH`` (``default`` None: required) and ``--profiles-dir DIR``."""
    where = "a bundled profile ({}), a profile saved in --profiles-dir, or a profile JSON path"
    parser.add_argument(
        "--profile",
        default=default,
        required=default is None,
        help=where.format(", ".join(available_profiles()))
        + ("" if default is None else " (default: %(default)s)"),
    )
    parser.add_argument(
        "--profiles-dir",
        type=Path,
        default=default_profiles_dir(environ),
        help=f"directory of user profiles, e.g. from `l4 calibrate-alpha --write` (default: "
        f"${PROFILES_DIR_ENV}, else $XDG_DATA_HOME/l4/profiles, else ~/.local/share/l4/profiles;"
        " here %(default)s)",
    )
