from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from l4.engine.cli import add_engine_parser, engine_targets
from l4.engine.faults import FaultConfig
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


def test_fault_flags_reach_the_chosen_instances() -> None:
    targets = engine_targets(
        parse("--instances", "3", "--base-port", "9000", "--error-rate", "0.25",
              "--error-status", "503", "--crash-after-tokens", "500", "--slowdown", "2",
              "--fault-instances", "0,2")
    )  # fmt: skip
    faulty = FaultConfig(error_rate=0.25, error_status=503, crash_after_tokens=500, slowdown=2.0)
    assert [t.config.faults for t in targets] == [faulty, FaultConfig(), faulty]
    assert not FaultConfig().active and faulty.active
    (one,) = engine_targets(parse("--port", "1", "--slowdown", "3"))
    assert one.config.faults == FaultConfig(slowdown=3.0)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ((), ConfigError),
        (("--port", "1", "--time-scale", "0"), ValidationError),
        (("--port", "70000"), ValidationError),
        (("--port", "-1"), ValidationError),
        (("--instances", "2", "--port", "9000"), ValidationError),
        (("--instances", "2"), ValidationError),
        (("--instances", "0", "--base-port", "9000"), ValidationError),
        (("--port", "1", "--max-num-seqs", "0"), ValidationError),
        (("--port", "1", "--kv-capacity-tokens", "1000"), ValidationError),
        (("--port", "1", "--profile", "nope"), UnknownNameError),
        (("--port", "1", "--error-rate", "2"), ValidationError),
        (("--port", "1", "--crash-after-tokens", "0"), ValidationError),
        (("--port", "1", "--slowdown", "-1"), ValidationError),
        (("--port", "1", "--fault-instances", "1"), ValidationError),
        (("--port", "1", "--fault-instances", "x"), ValidationError),
    ],
)
def test_bad_options_are_config_errors(argv: tuple[str, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        engine_targets(parse(*argv))


def test_port_zero_lets_the_os_pick_each_port() -> None:
    (one,) = engine_targets(parse("--port", "0"))
    assert one.port == 0
    targets = engine_targets(parse("--instances", "3", "--base-port", "0"))
    assert [t.port for t in targets] == [0, 0, 0]


def _announced_ports(proc: subprocess.Popen[str], count: int) -> list[int]:
    """The ports the engine printed, in instance order (it prints them once bound)."""
    ports = []
    assert proc.stdout is not None
    while len(ports) < count:
        line = proc.stdout.readline()
        assert line, f"l4 engine exited before announcing its ports (rc {proc.poll()})"
        match = re.search(r"instance (\d+) .* on http://127\.0\.0\.1:(\d+)$", line.strip())
        if match:
            assert int(match.group(1)) == len(ports)
            ports.append(int(match.group(2)))
    return ports


def test_l4_engine_process_dies_after_the_injected_crash() -> None:
    """The real command: one instance crashes, the process reports it and exits; the other lives.

    The engine binds port 0 (the OS picks free ports) and prints them: no port is chosen here and
    bound there, so no other process can take it in between."""
    cmd = [sys.executable, "-m", "l4", "engine", "--instances", "2", "--base-port", "0",
           "--time-scale", "100", "--crash-after-tokens", "5",
           "--fault-instances", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        crashing, healthy = _announced_ports(proc, 2)
        with httpx.Client(timeout=5) as c:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if c.get(f"http://127.0.0.1:{healthy}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.02)
            req = {"prompt": "hi", "max_tokens": 50, "ignore_eos": True}
            with pytest.raises(httpx.RemoteProtocolError):
                c.post(f"http://127.0.0.1:{crashing}/v1/completions", json=req)
            assert c.post(f"http://127.0.0.1:{healthy}/v1/completions", json=req).is_success
            with pytest.raises(httpx.ConnectError):
                c.get(f"http://127.0.0.1:{crashing}/health")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.communicate()
    assert "instance 0 crashed after 5 tokens" in err
    assert proc.returncode == 0 and "Traceback" not in err
