"""`l4 serve` as an operator starts it: options, config files, one-line errors, --emulate."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from l4.cli import build_parser
from l4.errors import ConfigError, ValidationError
from l4.gateway.cli import bind, build_config
from l4.gateway.config import EngineKind


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_options_and_a_config_file_merge_with_the_command_line_winning(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        'backends = ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]\n'
        'policy = "least_load"\nport = 9000\nscrape-interval = 0.3\n'
        "boundaries = [2048]\nstage_sizes = [2, 1]\n"
    )
    config = build_config(args("--config", str(cfg), "--port", "9100", "--engine-kind", "openai"))
    assert config.port == 9100 and config.policy == "least_load"
    assert config.scrape_interval_s == 0.3 and config.engine_kind is EngineKind.OPENAI
    assert config.static_plan is not None and config.static_plan.stage_sizes == (2, 1)
    assert len(config.backends) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "no backend"),
        (("--backend", "localhost:8000"), "is not an http(s) URL"),
        (("--backend", "http://a:1", "--backend", "http://a:1"), "listed twice"),
        (("--backend", "http://a:1", "--boundaries", "100"), "go together"),
        (("--backend", "http://a:1", "--boundaries", "x", "--stage-sizes", "1"), "integers"),
        (("--backend", "http://a:1", "--boundaries", "100", "--stage-sizes", "1,1"), "add up"),
        (("--backend", "http://a:1", "--scrape-interval", "0"), "--scrape-interval"),
        (("--backend", "http://a:1", "--port", "70000"), "--port"),
        (("--backend", "http://a:1", "--migration-limit", "-1"), "--migration-limit"),
        (("--backend", "http://a:1", "--time-scale", "0"), "--time-scale"),
    ],
)
def test_bad_options_are_one_line_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        build_config(args(*argv))


def test_an_unknown_option_in_the_config_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('backends = ["http://a:1"]\nbackend_pool = 3\n')
    with pytest.raises(ValidationError, match="unknown option 'backend_pool'"):
        build_config(args("--config", str(cfg)))
    cfg.write_text("backends = [\n")
    with pytest.raises(ValidationError, match="not valid TOML"):
        build_config(args("--config", str(cfg)))


def test_a_busy_port_is_one_line() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    with pytest.raises(ConfigError, match=r"cannot listen on no-such-host\.invalid"):
        bind("no-such-host.invalid", 0)


def test_the_command_line_fails_with_one_line_and_status_2() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "l4", "serve", "--backend", "http://127.0.0.1:1",
             "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("l4: error: cannot listen on")
    assert "Traceback" not in done.stderr


def test_emulate_serves_the_openai_api_with_nothing_else_installed() -> None:
    """The README's try-it command: `l4 serve --emulate 2`, then a client."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "l4", "serve", "--emulate", "2", "--port", str(port),
         "--time-scale", "20", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        import urllib.request

        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        body = orjson.dumps({"prompt": "hello", "max_tokens": 5, "ignore_eos": True})
        req = urllib.request.Request(
            url + "/v1/completions", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = orjson.loads(r.read())
        assert answer["usage"]["completion_tokens"] == 5
        with urllib.request.urlopen(url + "/l4/state", timeout=5) as r:
            state = orjson.loads(r.read())
        assert len(state["instances"]) == 2 and all(i["healthy"] for i in state["instances"])
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
