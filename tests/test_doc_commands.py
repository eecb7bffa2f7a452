"""Every command the README and docs/ give to reproduce a figure runs, at a small size.

Each entry below is a command exactly as a document writes it (placeholders such as ``S`` filled
in) followed by options that shrink it (argparse keeps the last value of an option, so they
override the document's) and send its outputs to a temporary folder. Commands that need a GPU,
data outside the repository, or minutes of CPU are skipped with the reason. A scan of the
documents checks that no script or ``l4`` sub-command is mentioned without an entry here.
"""

from __future__ import annotations

import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs" / "benchmarks").glob("*.md")),
]
ENGINE_SUBCOMMANDS = (
    "simulate",
    "capacity",
    "plan",
    "engine",
    "profile-attention",
    "calibrate-alpha",
)
GPU = "needs a CUDA GPU; the CPU path of the same command is tests/profiler/test_profile_cli.py"
# Tiny experiment suite: one scenario, 5 s of arrivals, no capacity search, no cache.
TINY_SUITE = (
    "--seeds 1 --duration 5 --no-capacity --scenarios azure-conv-3b --policies round_robin "
    "--jobs 1 --no-cache --out {out}/results.md"
)


@dataclass(frozen=True)
class Command:
    doc: str  # path under the repository root
    text: str  # as the document writes it (whitespace collapsed)
    extra: str = ""  # appended options: smaller, and outputs under {out}
    subst: dict[str, str] = field(default_factory=dict)  # placeholders of the text
    skip: str = ""  # why it does not run here
    xfail: str = ""  # known broken (strict: the fix must remove the mark)
    engine: bool = False  # a server: start it, check its ports answer, stop it

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.text}"[:90]


COMMANDS = (
    Command(doc="README.md", text="python3 -m l4 simulate", extra="--num-requests 200"),
    Command(
        doc="README.md",
        text="l4 simulate --trace mooncake --profile h100-llama-3.1-8b --instances 16 "
        "--policies round_robin,least_load --rate-scale 3 --out out/run1",
        extra="--num-requests 200 --out {out}/run1",
    ),
    Command(
        doc="README.md",
        text="l4 capacity --trace azure-conv --instances 4 --policies least_load "
        "--json out/cap.json",
        extra="--num-requests 100 --iterations 2 --json {out}/cap.json",
    ),
    Command(
        doc="README.md",
        text="l4 plan --trace mooncake --profile h100-llama-3.2-3b --instances 16 --rate-scale 4",
    ),
    Command(
        doc="README.md",
        text="l4 engine --port 8000 --profile h100-llama-3.1-8b",
        extra="--port 0",
        engine=True,
    ),
    Command(
        doc="docs/engine.md",
        text="l4 engine --port 8001 --profile h100-llama-3.2-3b --time-scale 10",
        extra="--port 0",
        engine=True,
    ),
    Command(
        doc="docs/engine.md",
        text="l4 engine --instances 4 --base-port 8001 --profile h100-llama-3.1-8b --seed 1",
        extra="--base-port 0",
        engine=True,
    ),
    Command(
        doc="docs/baselines.md",
        text="l4 simulate --policies round_robin,least_load,llumnix,length_buckets "
        "--rate-scale S [--migration M]",
        subst={"S": "4", "[--migration M]": "--migration replay"},
        extra="--num-requests 200",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/sim_speed.py",
        extra="--num-requests 200 --repeats 1 --out {out}",
    ),
    Command(
        doc="docs/benchmarks/sim_speed.md",
        text="python benchmarks/sim_speed.py --repeats 3",
        extra="--num-requests 100 --repeats 1 --policies round_robin --out {out}",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/planner_speed.py",
        extra="--repeats 1 --sizes 16 --out {out}",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/planning_offload.py",
        extra="--instances 4 --rounds 1 --out {out}",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/validate_single_instance.py",
        extra="--out {out}/validation.json",
    ),
    Command(
        doc="docs/validation.md",
        text="python benchmarks/validate_single_instance.py",
        extra="--out {out}/validation.json",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/experiments.py [--quick]",
        subst={"[--quick]": "--quick"},
        extra=f"{TINY_SUITE} --policies round_robin,l4",
    ),
    Command(
        doc="docs/l4.md",
        text="python benchmarks/experiments.py --jobs 2",
        extra=TINY_SUITE,
    ),
    Command(
        doc="docs/results.md",
        text="python benchmarks/experiments.py --jobs 2",
        extra=TINY_SUITE,
    ),
    Command(
        doc="README.md",
        text="python benchmarks/effects.py",
        extra="--trace azure-conv --profile h100-llama-3.1-8b --instances 2 --rate-scales 2 "
        "--duration 10 --windows 1 --jobs 1 --out {out}/effects.md",
    ),
    Command(
        doc="docs/benchmarks/effects.md",
        text="python benchmarks/effects.py --trace mooncake --profile h100-llama-3.2-3b "
        "--instances 16 --rate-scales 2,4 --duration 300 --windows 3",
        extra="--instances 4 --rate-scales 4 --duration 10 --windows 1 --jobs 1 "
        "--out {out}/effects.md",
    ),
    Command(
        doc="docs/benchmarks/effects-azure-longdoc.md",
        text="python benchmarks/effects.py --trace azure-longdoc --profile h100-llama-3.2-3b "
        "--instances 16 --rate-scales 6.26 --duration 120 --windows 2",
        extra="--instances 4 --rate-scales 2 --duration 5 --windows 1 --jobs 1 "
        "--out {out}/effects.md",
    ),
    Command(
        doc="docs/benchmarks/heterogeneity_ceiling.md",
        text="python benchmarks/heterogeneity_ceiling.py --traces azure-longdoc,servegen-r1,"
        "mooncake,azure-conv,sharegpt,servegen-mmid --profile h100-llama-3.2-3b --alphas "
        "calibrated,0,paper --instances 16 --batch-sizes 4,8,16,32,64 --draws 200",
        extra="--traces azure-longdoc --alphas calibrated --instances 4 --batch-sizes 4 "
        "--draws 5 --requests 500 --no-write",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/engine_fidelity.py",
        extra="--num-requests 4 --time-scales 20 --out {out}",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/engine_load.py",
        extra="--streams 4 --time-scales 10 --input-tokens 16 --output-tokens 16 --repeats 1 "
        "--out {out}",
    ),
    Command(
        doc="docs/engine.md",
        text="python benchmarks/engine_load.py --repeats 3",
        extra="--streams 2 --time-scales 10 --input-tokens 16 --output-tokens 8 --repeats 1 "
        "--out {out}",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/gateway_overhead.py",
        extra="--streams 4 --time-scales 1 --instances 2 --output 8 --duration 2 --repeats 1 "
        "--no-write",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/gateway_vs_sim.py",
        extra="--trace azure-conv --duration 5 --instances 2 --policies least_load "
        "--time-scale 10 --repeats 1 --sim-draws 2 --no-write",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/engine_big_request.py",
        extra="--streams 2 --repeats 1 --cases oversize --modes offload --out {out}",
    ),
    Command(doc="README.md", text="python tools/calibrate_profiles.py --check"),
    Command(
        doc="docs/calibration.md",
        text="python tools/calibrate_profiles.py",
        skip="rewrites the bundled profiles in place; `--check` runs the same computation",
    ),
    Command(
        doc="docs/calibration.md",
        text="python tools/calibrate_profiles.py --import-sources ../shared/sim_data/profiles",
        skip="reads measurements outside the repository (the project's shared folder)",
    ),
    Command(doc="README.md", text="l4 profile-attention --device cuda", skip=GPU),
    Command(
        doc="docs/profiler.md",
        text="l4 profile-attention --device cuda --out out/profile-attention",
        skip=GPU,
    ),
    Command(
        doc="docs/profiler.md",
        text="l4 calibrate-alpha --csv out/hopper-profile/llama-3.1-8b_flash_skew.csv "
        "--profile h100-llama-3.1-8b",
        skip=f"reads the CSV of a GPU run; {GPU}",
    ),
    Command(
        doc="README.md",
        text="python benchmarks/mutation.py [--sample N]",
        skip="minutes of CPU per module and needs mutmut, which the test suite does not install",
    ),
    Command(
        doc="docs/benchmarks/mutation.md",
        text="benchmarks/mutation.py",
        skip="minutes of CPU per module and needs mutmut, which the test suite does not install",
    ),
)


def _normalised(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def _argv(cmd: Command, out: Path) -> list[str]:
    text = cmd.text
    for key, value in cmd.subst.items():
        text = text.replace(key, value)
    words = shlex.split(text) + shlex.split(cmd.extra.replace("{out}", str(out)))
    if words[0] in ("python", "python3"):
        script = words[1]
        if script.startswith(("benchmarks/", "tools/")):
            script = str(ROOT / script)  # the documents run from the repository root
        return [sys.executable, script, *words[2:]]
    assert words[0] == "l4", words
    return [sys.executable, "-m", "l4", *words[1:]]


def _run_engine(argv: list[str]) -> None:
    # The engine logs (to stderr) one "serving on http://HOST:PORT" line per instance; a reader
    # thread keeps the pipe drained so a wedged engine fails this test instead of hanging it.
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout
    reader = threading.Thread(
        target=lambda: [lines.put(x) for x in iter(out.readline, "")], daemon=True
    )
    reader.start()
    instances = int(argv[argv.index("--instances") + 1]) if "--instances" in argv else 1
    try:
        ports = []
        while len(ports) < instances:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                raise AssertionError(
                    f"l4 engine announced no port in 60 s (rc {proc.poll()})"
                ) from None
            if "on http://" in line:
                ports.append(int(line.strip().rsplit(":", 1)[1]))
        with httpx.Client(timeout=5) as c:
            for port in ports:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        assert c.get(f"http://127.0.0.1:{port}/health").status_code == 200
                        break
                    except httpx.TransportError:
                        assert time.monotonic() < deadline and proc.poll() is None
                        time.sleep(0.05)
                req = {"prompt": "hi", "max_tokens": 3, "ignore_eos": True}
                assert c.post(f"http://127.0.0.1:{port}/v1/completions", json=req).is_success
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
        reader.join(timeout=5)  # the pipe's end: the reader stops, then the pipe can close
        out.close()


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.id)
def test_documented_command_runs_small(cmd: Command, tmp_path: Path) -> None:
    assert _normalised(cmd.text) in _normalised((ROOT / cmd.doc).read_text()), (
        f"{cmd.doc} no longer gives {cmd.text!r}: update this table"
    )
    if cmd.skip:
        pytest.skip(cmd.skip)
    argv = _argv(cmd, tmp_path)
    if cmd.engine:
        _run_engine(argv)
        return
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if cmd.xfail:
        assert proc.returncode != 0, f"fixed? remove the xfail of {cmd.id}"
        pytest.xfail(cmd.xfail)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # every output went where the overrides sent it


_COMMAND = re.compile(
    r"(?:python3? )?(benchmarks/\w+\.py|tools/\w+\.py)"
    rf"|\bl4 ({'|'.join(ENGINE_SUBCOMMANDS)})\b"
)


def _key(match: re.Match[str]) -> str:
    return match.group(1) or f"l4 {match.group(2)}"


def test_every_documented_script_and_subcommand_has_a_smoke_entry() -> None:
    covered = {_key(m) for c in COMMANDS for m in [_COMMAND.search(c.text)] if m}
    mentioned: dict[str, str] = {}
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            for m in _COMMAND.finditer(line):
                # Only runnable things: scripts of the repository and l4 sub-commands.
                if m.group(1) and not (ROOT / m.group(1)).exists():
                    continue
                if m.group(1) and Path(m.group(1)).name.startswith("_"):
                    continue  # a helper module the scripts import, not a command
                mentioned.setdefault(_key(m), str(doc.relative_to(ROOT)))
    missing = {k: d for k, d in mentioned.items() if k not in covered}
    assert not missing, f"documented but never run here: {missing}"
