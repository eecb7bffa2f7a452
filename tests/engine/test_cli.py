from __future__ import annotations

import argparse

import pytest

from l4.engine.cli import add_engine_parser, engine_targets
from l4.errors import ConfigError, UnknownNameError, ValidationError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="l4")
    add_engine_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["engine", *argv])


def test_one_instance_on_a_port() -> None:
    (t,) = engine_targets(parse("--port", "8100", "--time-scale", "10", "--max-num-seqs", "8"))
    assert (t.host, t.port) == ("127.0.0.1", 8100)
    assert t.config.time_scale == 10 and t.config.instance_config.max_num_seqs == 8
    assert t.config.served_model_name == t.config.profile.model.name


def test_k_instances_on_consecutive_ports() -> None:
    targets = engine_targets(
        parse("--instances", "3", "--base-port", "9000", "--served-model-name", "m")
    )
    assert [t.port for t in targets] == [9000, 9001, 9002]
    assert [t.config.instance_id for t in targets] == [0, 1, 2]
    assert {t.config.served_model_name for t in targets} == {"m"}


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ((), ConfigError),
        (("--port", "1", "--time-scale", "0"), ValidationError),
        (("--port", "70000"), ValidationError),
        (("--instances", "2", "--port", "9000"), ValidationError),
        (("--instances", "2"), ValidationError),
        (("--instances", "0", "--base-port", "9000"), ValidationError),
        (("--port", "1", "--max-num-seqs", "0"), ValidationError),
        (("--port", "1", "--kv-capacity-tokens", "1000"), ValidationError),
        (("--port", "1", "--profile", "nope"), UnknownNameError),
    ],
)
def test_bad_options_are_config_errors(argv: tuple[str, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        engine_targets(parse(*argv))
