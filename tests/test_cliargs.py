"""Shared CLI pieces: output paths checked before any work, the user profile directory."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from l4.cliargs import (
    PROFILES_DIR_ENV,
    Outputs,
    add_profile_options,
    check_output_dir,
    check_output_file,
    default_profiles_dir,
    output_paths,
    write_output,
)
from l4.errors import ConfigError


def test_output_files_that_can_be_written_pass(tmp_path: Path) -> None:
    check_output_file("--json", Path("-"))  # standard output
    check_output_file("--json", tmp_path / "new.json")
    check_output_file("--json", tmp_path / "deep" / "er" / "new.json")  # directories are made
    (tmp_path / "old.json").write_text("{}")
    check_output_file("--json", tmp_path / "old.json")  # overwritten
    check_output_dir("--out", tmp_path / "run")
    check_output_dir("--out", tmp_path)


def test_output_paths_that_cannot_be_written_are_one_clear_error(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"^--json .*: is a directory, expected a file name$"):
        check_output_file("--json", tmp_path)
    with pytest.raises(ConfigError, match=r"a_file is a file, not a directory$"):
        check_output_file("--json", a_file / "report.json")
    with pytest.raises(ConfigError, match=r"a_file is a file, not a directory$"):
        check_output_file("--requests-out", a_file / "x" / "y.jsonl")
    with pytest.raises(ConfigError, match=r"^--out .*a_file: is a file, expected a directory$"):
        check_output_dir("--out", a_file)
    with pytest.raises(ConfigError, match=r"a_file is a file, not a directory$"):
        check_output_dir("--out", a_file / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="permission denied"):
            check_output_file("--json", locked / "r.json")
        with pytest.raises(ConfigError, match="not writable"):
            check_output_dir("--out", locked)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({PROFILES_DIR_ENV: "/srv/l4", "XDG_DATA_HOME": "/x", "HOME": "/h"}, "/srv/l4"),
        ({"XDG_DATA_HOME": "/x", "HOME": "/h"}, "/x/l4/profiles"),
        ({"XDG_DATA_HOME": "relative", "HOME": "/h"}, "/h/.local/share/l4/profiles"),
        ({"XDG_DATA_HOME": "", "HOME": "/h"}, "/h/.local/share/l4/profiles"),
        ({"HOME": "/h"}, "/h/.local/share/l4/profiles"),
    ],
)
def test_default_profiles_dir(environ: dict[str, str], expected: str) -> None:
    assert default_profiles_dir(environ) == Path(expected)


def test_profile_options_take_their_default_from_the_given_environment() -> None:
    parser = argparse.ArgumentParser()
    add_profile_options(parser, default="h100-llama-3.2-3b", environ={PROFILES_DIR_ENV: "/p"})
    args = parser.parse_args([])
    assert (args.profile, args.profiles_dir) == ("h100-llama-3.2-3b", Path("/p"))
    args = parser.parse_args(["--profile", "mine", "--profiles-dir", "/q"])
    assert (args.profile, args.profiles_dir) == ("mine", Path("/q"))
    required = argparse.ArgumentParser()
    add_profile_options(required, default=None, environ={})
    with pytest.raises(SystemExit):
        required.parse_args([])


def test_output_paths_resolve_out_and_refuse_two_standard_outputs(tmp_path: Path) -> None:
    names = {"json_name": "report.json", "plot_name": "cdf.png", "requests_name": "q.jsonl"}
    out = tmp_path / "run"
    paths = output_paths(out=out, json=None, requests=None, **names)
    assert (paths.json, paths.requests, paths.plot) == (
        out / "report.json",
        out / "q.jsonl",
        out / "cdf.png",
    )
    assert not paths.uses_stdout
    paths = output_paths(out=out, json=Path("-"), requests=None, **names)
    assert paths.json == Path("-") and paths.uses_stdout and paths.requests == out / "q.jsonl"
    assert output_paths(out=None, json=None, **names) == Outputs()
    with pytest.raises(ConfigError, match="only one of --json and --requests-out"):
        output_paths(out=None, json=Path("-"), requests=Path("-"), **names)
    (out / "cdf.png").mkdir(parents=True)  # the plot's name is taken by a directory
    with pytest.raises(ConfigError, match=r"^--out .*run/cdf.png: is a directory"):
        output_paths(out=out, json=None, **names)


def test_write_output_writes_files_or_standard_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert write_output(tmp_path / "a" / "b.json", "{}\n") is True
    assert (tmp_path / "a" / "b.json").read_text() == "{}\n"
    assert write_output(Path("-"), "[1]\n") is False
    assert capsys.readouterr().out == "[1]\n"
