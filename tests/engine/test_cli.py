from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

import l4
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
    """The ports the engine logged, in instance order (it logs them once bound)."""
    ports = []
    assert proc.stderr is not None
    while len(ports) < count:
        line = proc.stderr.readline()
        assert line, f"l4 engine exited before announcing its ports (rc {proc.poll()})"
        match = re.search(r"instance (\d+) .* serving on http://127\.0\.0\.1:(\d+)$", line.strip())
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


def run_l4_engine(*argv: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "l4", "engine", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_a_busy_port_is_one_line_and_nothing_is_served() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = run_l4_engine("--port", str(port))
    assert done.returncode == 2
    assert done.stderr.startswith(f"l4: error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in done.stderr and done.stderr.count("\n") == 1
    assert "serving on" not in done.stdout + done.stderr


def test_the_second_of_two_instances_on_a_busy_port_stops_both() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = run_l4_engine("--instances", "2", "--base-port", str(port - 1))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in done.stderr
    assert "serving on" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        ("no-such-host.invalid", "l4: error: cannot resolve host 'no-such-host.invalid': "),
        ("192.0.2.1", "l4: error: cannot listen on 192.0.2.1:"),  # TEST-NET-1: not ours
    ],
)
def test_a_bad_host_is_one_line(host: str, needle: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run_l4_engine("--host", host, "--port", str(port))
    assert done.returncode == 2
    assert done.stderr.startswith(needle) and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and "serving on" not in done.stderr


def test_body_limit_and_log_level_options() -> None:
    (t,) = engine_targets(parse("--port", "1", "--max-request-body-bytes", "4096"))
    assert t.config.max_request_body_bytes == 4096
    (t,) = engine_targets(parse("--port", "1"))
    assert t.config.max_request_body_bytes == 32 * 1024 * 1024
    with pytest.raises(ValidationError, match="--max-request-body-bytes"):
        engine_targets(parse("--port", "1", "--max-request-body-bytes", "0"))
    assert parse("--port", "1").log_level == "info"
    assert parse("--port", "1", "--log-level", "DEBUG").log_level == "debug"
    with pytest.raises(SystemExit):
        parse("--port", "1", "--log-level", "loud")


def test_l4_engine_logs_serving_then_one_access_line_per_request() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "l4", "engine", "--port", str(port), "--time-scale", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            deadline = time.monotonic() + 20
            while True:
                try:
                    c.get("/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.02)
            req = {"prompt": "a b c", "max_tokens": 4, "ignore_eos": True}
            assert c.post("/v1/completions", json=req).status_code == 200
            assert c.get("/version").json() == {"version": l4.__version__}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out == ""
    lines = err.splitlines()
    assert re.fullmatch(
        r"INFO \d\d-\d\d \d\d:\d\d:\d\d \[l4\.engine\] instance 0 \(h100-llama-3\.2-3b, x100\) "
        rf"serving on http://127\.0\.0\.1:{port}",
        lines[0],
    ), lines[0]
    access = [line for line in lines if "[l4.engine.access]" in line]
    assert len(access) == 3  # the /health that answered, the completion, /version
    assert '"POST /v1/completions HTTP/1.1" 200 ' in access[1]
    assert "prompt_tokens=3 generated_tokens=4" in access[1]
    assert '"GET /version HTTP/1.1" 200 ' in access[2]
