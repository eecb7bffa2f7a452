"""Mutation score of the modules that decide results (issue 13), with mutmut 3.

For each module, a scratch copy of the repository (``build/mutation/<module>/``: ``src``, ``tests``
and ``pyproject.toml`` with a ``[tool.mutmut]`` section) is mutated by mutmut and checked against
the fastest test subset that covers it; mutmut runs, for each mutant, only the tests that reached
the mutated function. A mutant is *killed* when a test fails or times out (mutmut's timeout is CPU
time, so a busy machine does not fake kills); a survivor listed in ``mutation_equivalent.toml``
(reviewed: the mutant cannot change behaviour, with the reason) is *equivalent* and leaves the
score. Score = killed / (total - equivalent). Target: >= 90 % for every module.

Mutation runs are CPU-heavy: one module at a time, under ``nice``. Writes
docs/benchmarks/mutation.md (and ``--json PATH``). Usage:

    python benchmarks/mutation.py [--module agents ...] [--json PATH] [--max-children 2]
    python benchmarks/mutation.py --module agents --again   # keep results, re-check survivors

mutmut is installed on demand (``pip install mutmut==3.8.1``); the test suite does not need it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation_equivalent.toml"
MUTMUT = "mutmut==3.8.1"
TARGET = 0.90
KILLED = {"killed", "timeout", "segfault"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Module:
    sources: tuple[str, ...]  # globs under the repository root
    tests: tuple[str, ...]  # the fastest test subset that covers it


# The end-to-end runtime tests take a minute each mutant: the unit tests must do the work.
_AGENT_TESTS = tuple(
    f"tests/agents/test_{t}.py"
    for t in (
        *("agent", "bus", "leaders", "load", "observer", "refinement", "stages"),
        *("runtime_decisions", "membership", "front", "planning"),
    )
)

MODULES: dict[str, Module] = {
    "core": Module(sources=("src/l4/core/*.py",), tests=("tests/core",)),
    "costmodel/step.py": Module(
        sources=("src/l4/costmodel/step.py",),
        tests=("tests/costmodel/test_step.py", "tests/instance"),
    ),
    "instance": Module(
        sources=("src/l4/instance/*.py",),
        tests=("tests/instance", "tests/sim/test_closed_form.py"),
    ),
    "agents": Module(sources=("src/l4/agents/*.py",), tests=_AGENT_TESTS),
    # Where arrivals go (bids, spill, overflow): measured on its own, a sample of the whole
    # package holds a handful of its mutants.
    "agents/front.py": Module(sources=("src/l4/agents/front.py",), tests=_AGENT_TESTS),
    "sim/capacity.py": Module(
        sources=("src/l4/sim/capacity.py",),
        tests=("tests/sim/test_capacity.py", "tests/sim/test_capacity_classes.py"),
    ),
    "metrics.py": Module(sources=("src/l4/metrics.py",), tests=("tests/test_metrics.py",)),
}

# Run inside the scratch copy: every mutant's status, and the diff of those not killed.
_READ_RESULTS = """
import json, sys
from pathlib import Path
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
out = {}
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    path = meta.with_suffix("").relative_to("mutants")
    m = SourceFileMutationData(path=path)
    m.load()
    for name, code in m.exit_code_by_key.items():
        status = status_by_exit_code[code]
        diff = "" if status in ("killed", "timeout") else get_diff_for_mutant(name, path=path)
        out[name] = {"file": str(path), "status": status, "diff": diff}
json.dump(out, sys.stdout)
"""


# Run inside the scratch copy: generate the mutants (as `mutmut run` does first), list their names.
_GENERATE = """
import json, sys
from pathlib import Path
from mutmut import __main__ as m
from mutmut.mutation.data import SourceFileMutationData
m.set_mutant_under_test("mutant_generation")
Path("mutants").mkdir(exist_ok=True)
m.copy_src_dir()
m.copy_also_copy_files()
m.setup_source_paths()
m.store_lines_covered_by_tests()
m.create_mutants(1)
names = []
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    data = SourceFileMutationData(path=meta.with_suffix("").relative_to("mutants"))
    data.load()
    names += sorted(data.exit_code_by_key)
json.dump(names, sys.stdout)
"""


def generate(work: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _GENERATE], cwd=work, check=True, capture_output=True, text=True
    )
    names: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return names


def ensure_mutmut() -> str:
    try:
        import mutmut  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print(f"installing {MUTMUT} (the benchmark's tool; the test suite does not need it)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", MUTMUT], check=True)
        import mutmut  # type: ignore[import-not-found,unused-ignore]
    return str(getattr(mutmut, "__version__", MUTMUT.split("==")[1]))


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def prepare(name: str, module: Module, *, keep: bool) -> Path:
    """The scratch copy for ``name``: fresh, or (``keep``) with its results and fresh tests."""
    work = WORK / name.replace("/", "_")
    if work.exists() and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("src", "tests"):
        if (work / sub).exists():
            shutil.rmtree(work / sub)
        shutil.copytree(ROOT / sub, work / sub, ignore=shutil.ignore_patterns("__pycache__"))
    config = "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["src"]',
            f"only_mutate = {_toml_list(list(module.sources))}",
            f"pytest_add_cli_args_test_selection = {_toml_list(list(module.tests))}",
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "--hypothesis-seed=0"]',
            "use_git_change_detection = false",
            # CPU seconds per mutant: 4 x (its tests' time + 1 s), twice, not mutmut's 15 x: on a
            # shared machine a mutant stuck in a loop otherwise holds a worker for many minutes.
            "timeout_multiplier = 4.0",
            "",
        ]
    )
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + config)
    return work


def read_results(work: Path) -> dict[str, dict[str, str]]:
    out = subprocess.run(
        [sys.executable, "-c", _READ_RESULTS], cwd=work, check=True, capture_output=True, text=True
    )
    results: dict[str, dict[str, str]] = json.loads(out.stdout)
    return results


def run_mutmut(work: Path, names: list[str], max_children: int, niceness: int) -> None:
    log = work / "mutmut.log"
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names]
    with log.open("a") as fh:
        proc = subprocess.run(
            cmd,
            cwd=work,
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.nice(niceness),
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"mutmut failed in {work} (exit {proc.returncode}); see {log}")


# ---- equivalent mutants ---------------------------------------------------------------------
def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and added lines of a mutant's diff, stripped: its stable identity."""
    body = [ln for ln in diff.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    before = "\n".join(ln[1:].strip() for ln in body if ln.startswith("-"))
    after = "\n".join(ln[1:].strip() for ln in body if ln.startswith("+"))
    return before, after


def context_line(diff: str) -> str:
    """The unchanged line just above the change (tells apart equal changes in one function)."""
    body = [ln for ln in diff.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    above = ""
    for ln in body:
        if ln.startswith(("-", "+")):
            break
        above = ln[1:].strip()
    return above


def function_of(mutant: str) -> str:
    """``l4.x.y.xǁClassǁmethod__mutmut_3`` -> ``Class.method``; ``x_func__mutmut_3`` -> ``func``."""
    last = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    if last.startswith("xǁ"):
        return ".".join(p for p in last[2:].split("ǁ") if p)
    return last.removeprefix("x_")


def load_equivalent() -> list[dict[str, str]]:
    if not EQUIVALENT_FILE.exists():
        return []
    entries: list[dict[str, str]] = tomllib.loads(EQUIVALENT_FILE.read_text()).get("equivalent", [])
    for e in entries:
        missing = {"file", "function", "before", "after", "reason"} - set(e)  # context: optional
        if missing:
            raise SystemExit(f"{EQUIVALENT_FILE.name}: entry {e} lacks {sorted(missing)}")
    return entries


def match_equivalent(
    mutant: str, info: dict[str, str], entries: list[dict[str, str]]
) -> dict[str, str] | None:
    before, after = changed_lines(info["diff"])
    for e in entries:
        if (
            e["file"] == info["file"]
            and e["function"] == function_of(mutant)
            and e["before"].strip() == before
            and e["after"].strip() == after
            and e.get("context", context_line(info["diff"])).strip() == context_line(info["diff"])
        ):
            return e
    return None


# ---- one module -----------------------------------------------------------------------------
def measure(
    name: str,
    module: Module,
    *,
    keep: bool,
    max_children: int,
    niceness: int,
    sample: int,
    seed: int,
) -> dict[str, Any]:
    commit = git_commit()  # what the scratch copy is made of
    work = prepare(name, module, keep=keep)
    t0 = time.monotonic()
    previous = read_results(work) if keep and (work / "mutants").exists() else {}
    population = generate(work)
    chosen = sorted(random.Random(seed).sample(population, min(sample, len(population))))
    if sample <= 0 or sample >= len(population):
        chosen = population
    # mutmut tests the chosen mutants without a result (all of them in a fresh copy); --again
    # then re-checks the ones not killed (after new tests).
    todo = [m for m in chosen if m not in previous or previous[m]["status"] not in KILLED]
    if todo:
        run_mutmut(work, todo, max_children, niceness)
    # mutmut forgets results when the test selection or its settings change: test those again.
    current = read_results(work)
    lost = [m for m in chosen if current.get(m, {}).get("status", "not checked") == "not checked"]
    if lost:
        run_mutmut(work, lost, max_children, niceness)
    wall_s = time.monotonic() - t0
    results = {m: r for m, r in read_results(work).items() if m in set(chosen)}
    entries = load_equivalent()
    counts = {"killed": 0, "total": len(results), "equivalent": 0}
    by_status: dict[str, int] = {}
    survivors: list[dict[str, str]] = []
    equivalent: list[dict[str, str]] = []
    for mutant, info in sorted(results.items()):
        by_status[info["status"]] = by_status.get(info["status"], 0) + 1
        if info["status"] in KILLED:
            counts["killed"] += 1
            continue
        entry = match_equivalent(mutant, info, entries)
        row = {"mutant": mutant, "status": info["status"], "diff": info["diff"]}
        if entry is not None:
            counts["equivalent"] += 1
            equivalent.append({**row, "reason": entry["reason"]})
        else:
            survivors.append(row)
    scored = counts["total"] - counts["equivalent"]
    score = counts["killed"] / scored if scored else 1.0
    low, high = wilson(counts["killed"], scored)
    print(
        f"{name}: {counts['killed']}/{scored} killed ({score:.1%}, 95% {low:.1%}-{high:.1%}), "
        f"{counts['equivalent']} equivalent, {len(survivors)} not killed, of {len(population)} "
        f"mutants, {wall_s:.0f} s"
    )
    return {
        **counts,
        "score": score,
        "score_95": [low, high],
        "population": len(population),
        "sampled": len(chosen) < len(population),
        "sample_seed": seed,
        "commit": commit,
        "by_status": by_status,
        "tests": list(module.tests),
        "wall_s": wall_s,
        "rechecked_only": bool(keep and previous),
        "survivors": survivors,
        "equivalent_mutants": equivalent,
    }


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion k / n (the score of a random sample of mutants)."""
    if n == 0:
        return 0.0, 1.0
    z = 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ---- report ---------------------------------------------------------------------------------
def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _population(m: dict[str, Any]) -> str:
    total = m.get("population", m["total"])
    return f"{total} ({m['total']})" if m.get("sampled") else str(total)


def _score(m: dict[str, Any]) -> str:
    low, high = m.get("score_95", (m["score"], m["score"]))
    return f"{m['score']:.1%} [{low:.0%}–{high:.0%}]"


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# Mutation score",
        "",
        f"mutmut {meta['mutmut']}, Python {meta['python']}, "
        f"{meta['max_children']} worker(s) under `nice`. Written by `benchmarks/mutation.py`. "
        "Killed = a test failed or the mutant timed out (CPU time); equivalent = reviewed in "
        "`benchmarks/mutation_equivalent.toml`; score = killed / (total - equivalent). "
        f"Target: >= {TARGET:.0%} per module.",
        "",
        "A module measured on a random sample of its mutants (`--sample N`: the machine is "
        "shared and a full run takes hours) gives the score of the sample with its 95% Wilson "
        "interval. Commit: the tree the scratch copy was made of (after `--again`, the one the "
        "survivors were re-checked at).",
        "",
        "| module | commit | mutants (sample) | killed | equivalent | not killed | score [95%] "
        "| tests | wall |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, m in report["modules"].items():
        lines.append(
            f"| `{name}` | `{m['commit']}` | {_population(m)} | {m['killed']} | "
            f"{m['equivalent']} | {len(m['survivors'])} | {_score(m)} | {', '.join(m['tests'])} | "
            f"{m['wall_s']:.0f} s |"
        )
    for name, m in report["modules"].items():
        if not (m["survivors"] or m["equivalent_mutants"]):
            continue
        lines += ["", f"## `{name}`", ""]
        if m["equivalent_mutants"]:
            lines += ["Equivalent (cannot change behaviour):", ""]
            for e in m["equivalent_mutants"]:
                before, after = changed_lines(e["diff"])
                lines.append(f"* `{e['mutant']}`: `{before}` -> `{after}`: {e['reason']}")
            lines.append("")
        if m["survivors"]:
            lines += ["Not killed:", ""]
            for s in m["survivors"]:
                before, after = changed_lines(s["diff"])
                lines.append(f"* `{s['mutant']}` ({s['status']}): `{before}` -> `{after}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the scores here")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the mutmut processes")
    parser.add_argument(
        "--again",
        action="store_true",
        help="keep earlier results and re-check only the mutants not killed (after new tests)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=0,
        help="test a random sample of N mutants per module (0: all); the score then comes with "
        "its 95%% interval",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    version = ensure_mutmut()
    names = args.module or list(MODULES)
    modules = {
        n: measure(
            n,
            MODULES[n],
            keep=args.again,
            max_children=args.max_children,
            niceness=args.nice,
            sample=args.sample,
            seed=args.seed,
        )
        for n in names
    }
    report = {
        "meta": {
            "mutmut": version,
            "commit": git_commit(),
            "python": platform.python_version(),
            "max_children": args.max_children,
            "target": TARGET,
        },
        "modules": modules,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    # The committed report gathers modules measured one run at a time (each with its commit).
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mutation.json"
    merged: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"modules": {}}
    merged["meta"] = {k: v for k, v in report["meta"].items() if k != "commit"}
    merged["modules"].update(modules)
    merged["modules"] = {n: merged["modules"][n] for n in MODULES if n in merged["modules"]}
    path.write_text(json.dumps(merged, indent=2) + "\n")
    (args.out / "mutation.md").write_text(markdown(merged))
    missed = [n for n, m in modules.items() if m["score"] < TARGET]
    if missed:
        print(f"below the {TARGET:.0%} target: {', '.join(missed)}")


if __name__ == "__main__":
    main()
