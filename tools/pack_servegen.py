"""Pack ServeGen's per-client workload description into L4's compact bundled form.

Reads ``shared/sim_data/servegen/<model>/chunk-N-{trace.csv,dataset.json}`` (alibaba/ServeGen
@ f891d118, Apache-2.0; the format is in that folder's README) and writes
``src/l4/workload/data/servegen-<name>.json.gz`` plus the ServeGen section of ``LICENSES.md``.

The compact form keeps, per client:

* every 600-s window of one day that has traffic: ``[start_s, rate_rps, cv, family, shape,
  scale]`` (idle windows are dropped; ``family`` 0 = Gamma, 1 = Weibull);
* every dataset of that day (one per 6 h): the input and output length distributions as their
  quantiles at the fixed probability levels ``LEVELS`` (dense in the tail, so the rare 100K-token
  inputs and the long reasoning outputs survive), integers.

A full PMF has up to thousands of points; 60 quantiles reproduce its mean within a few percent
and its p50/p99 within one level's interpolation (the script prints the check). m-mid's source
spans 14 days; the first day is kept (``--offset`` in L4 picks the hour of that day), which keeps
the package small.

Guarantees: the selected source files are checked against the SHA-256 sums in the source's
``SHA256SUMS`` and against a pinned digest of those sums; output is deterministic (sorted keys,
gzip mtime 0), so running the script twice gives byte-identical files.

    python tools/pack_servegen.py [--source DIR] [--dest DIR]
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
# /work/main/../shared for the main checkout; pass --source from a worktree elsewhere.
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "sim_data" / "servegen"
DEFAULT_DEST = REPO_ROOT / "src" / "l4" / "workload" / "data"
DAY_S = 86_400
WINDOW_S = 600
FAMILIES = {"Gamma": 0, "Weibull": 1}
# Probability levels of the stored quantiles: every 2% to 90%, then denser into the tail.
LEVELS: tuple[float, ...] = (
    *(round(0.02 * k, 2) for k in range(46)),
    0.92,
    0.94,
    0.95,
    0.96,
    0.97,
    0.98,
    0.985,
    0.99,
    0.995,
    0.998,
    0.999,
    0.9995,
    0.9999,
    1.0,
)
LICENCE_MARKER = "<!-- servegen: written by tools/pack_servegen.py -->"


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    name: str  # bundled as servegen-<name>
    folder: str
    description: str
    # sha256 of the sorted "sha256  path" lines of the folder's files in SHA256SUMS
    sums_digest: str


SOURCES: tuple[Source, ...] = (
    Source(
        name="r1",
        folder="deepseek-r1",
        description="DeepSeek-R1 reasoning workload, 37 clients (the even chunks of the source)",
        sums_digest="540a05e2aa6e234eaa3363fbed622218b393823f53e8299e73dbe7acb6b7175c",
    ),
    Source(
        name="mmid",
        folder="m-mid",
        description="language workload of a mid-size model, 74 clients, first of 14 days",
        sums_digest="ea1f6c4290c0fa0206a229a623cf4577e1c275d7d2fb044fccaf8b7ab653d720",
    ),
)


def _pmf(text: str) -> tuple[np.ndarray, np.ndarray]:
    """A ServeGen PMF (a dict literal written as a string) as sorted (values, probabilities)."""
    table = ast.literal_eval(text)
    keys = sorted(k for k in table if table[k] > 0)
    values = np.array(keys, dtype=np.float64)
    probs = np.array([table[v] for v in keys], dtype=np.float64)
    return values, probs / probs.sum() if len(keys) else probs


def quantiles(values: np.ndarray, probs: np.ndarray) -> list[int]:
    """The PMF's quantiles at ``LEVELS``: the least value whose CDF reaches the level."""
    cdf = np.cumsum(probs)
    out = []
    for level in LEVELS:
        k = int(np.searchsorted(cdf, level - 1e-12, side="left"))
        out.append(int(values[min(k, len(values) - 1)]))
    return out


def _check(folder: Path, source: Source) -> str:
    lines = []
    for line in (folder.parent / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        if path.startswith(f"./{source.folder}/"):
            data = (folder.parent / path).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise SystemExit(f"{path}: sha256 does not match SHA256SUMS")
            lines.append(line)
    total = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    if source.sums_digest and total != source.sums_digest:
        raise SystemExit(f"{source.folder}: SHA256SUMS digest {total} != pinned")
    return total


def _chunk_ids(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("chunk-*-trace.csv"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    sums_digest: str
    clients: int
    windows: int
    mean_err_median: float
    mean_err_max: float
    input_err_weighted: float
    output_err_weighted: float


def pack_source(source_dir: Path, source: Source) -> tuple[dict[str, object], Check]:
    folder = source_dir / source.folder
    digest = _check(folder, source)
    clients: list[dict[str, object]] = []
    num_windows = 0
    errors: list[float] = []
    weighted = {"input": [0.0, 0.0], "output": [0.0, 0.0]}  # rate-weighted (PMF, packed) means
    for cid in _chunk_ids(folder):
        windows: list[list[float]] = []
        with (folder / f"chunk-{cid}-trace.csv").open() as f:
            for row in csv.reader(f):
                start = int(float(row[0]))
                if start >= DAY_S or not row[1] or float(row[1]) <= 0 or not row[3]:
                    continue
                windows.append(
                    [
                        start,
                        float(row[1]),
                        float(row[2]),
                        FAMILIES[row[3]],
                        float(row[4]),
                        float(row[5]),
                    ]
                )
        datasets: list[list[object]] = []
        raw = json.loads((folder / f"chunk-{cid}-dataset.json").read_text())
        for key in sorted(raw, key=int):
            if int(key) >= DAY_S:
                continue
            entry = {}
            pmfs = {f: _pmf(raw[key][f]) for f in ("input_tokens", "output_tokens")}
            if any(len(v) == 0 for v, _ in pmfs.values()):
                continue  # an empty PMF: the window uses the client's previous dataset
            for field, short in (("input_tokens", "input"), ("output_tokens", "output")):
                values, probs = pmfs[field]
                q = quantiles(values, probs)
                entry[short] = q
                # Check: the mean of the interpolated quantile function against the PMF's.
                mean = float(np.dot(values, probs))
                approx = float(np.trapezoid(q, LEVELS))
                errors.append(abs(approx - mean) / max(mean, 1.0))
                weight = sum(w[1] for w in windows)
                weighted[short][0] += weight * mean
                weighted[short][1] += weight * approx
            datasets.append([int(key), entry])
        if windows and datasets:
            clients.append({"client": cid, "windows": windows, "datasets": datasets})
            num_windows += len(windows)
    doc: dict[str, object] = {
        "format": "l4-servegen-1",
        "name": f"servegen-{source.name}",
        "source": f"alibaba/ServeGen @ f891d118, {source.folder}",
        "window_s": WINDOW_S,
        "day_s": DAY_S,
        "families": {str(v): k for k, v in FAMILIES.items()},
        "levels": list(LEVELS),
        "clients": clients,
    }
    err = np.array(errors)
    check = Check(
        sums_digest=digest,
        clients=len(clients),
        windows=num_windows,
        mean_err_median=float(np.median(err)),
        mean_err_max=float(err.max()),
        input_err_weighted=weighted["input"][1] / weighted["input"][0] - 1.0,
        output_err_weighted=weighted["output"][1] / weighted["output"][0] - 1.0,
    )
    return doc, check


def render(doc: dict[str, object]) -> bytes:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return gzip.compress(text.encode("ascii"), compresslevel=9, mtime=0)


def licence_section(packed: list[tuple[Source, Check, str, int]]) -> str:
    out = [
        LICENCE_MARKER,
        "",
        "## ServeGen workloads (`servegen-*.json.gz`)",
        "",
        "* Source: alibaba/ServeGen @ f891d118, `data/reason/deepseek-r1` and",
        "  `data/language/m-mid` (copied verbatim to `shared/sim_data/servegen`)",
        "* Licence: Apache-2.0",
        "* Cite: Yuxing Xiang et al., *ServeGen: Workload Characterization and Generation of Large",
        "  Language Model Serving in Production*, USENIX NSDI '26 (arXiv 2505.09999).",
        "* Kept: per client, every 600-s window of the first day with traffic (rate, CV, arrival",
        "  family and its shape and scale) and every dataset of that day (one per 6 h), the length",
        "  PMFs as 60 quantiles (denser in the tail); written by `tools/pack_servegen.py`.",
        "* Dropped: idle windows, days after the first (m-mid spans 14), DeepSeek-R1's",
        "  `reason_ratio` PMF (it splits the output, whose length is kept), the PMFs' exact",
        "  points.",
        "",
    ]
    for src, check, digest, size in packed:
        out += [
            f"### `servegen-{src.name}.json.gz` ({size / 1024:.0f} KiB)",
            "",
            f"* {src.description}: {check.clients:.0f} clients with traffic, "
            f"{check.windows:.0f} windows",
            f"* Source files: `{src.folder}/` (sha256 of their SHA256SUMS lines "
            f"`{check.sums_digest}`)",
            f"* Quantile fit: mean length within {check.mean_err_median:.1%} (median) and "
            f"{check.mean_err_max:.1%} (worst, a few-token output PMF) of the PMF's; "
            f"weighted by the clients' traffic, input {check.input_err_weighted:+.2%}, "
            f"output {check.output_err_weighted:+.2%}",
            f"* Packed file sha256: `{digest}`",
            "",
        ]
    return "\n".join(out)


def write_licences(dest: Path, section: str) -> None:
    path = dest / "LICENSES.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head = text.split(LICENCE_MARKER, 1)[0].rstrip("\n")
    path.write_text((head + "\n\n" if head else "") + section, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args()
    packed = []
    for src in SOURCES:
        doc, check = pack_source(args.source, src)
        blob = render(doc)
        path = args.dest / f"servegen-{src.name}.json.gz"
        path.write_bytes(blob)
        digest = hashlib.sha256(blob).hexdigest()
        packed.append((src, check, digest, len(blob)))
        print(
            f"servegen-{src.name}: {check.clients:.0f} clients, {check.windows:.0f} "
            f"windows, {len(blob) / 1024:.0f} KiB; quantile mean error median "
            f"{check.mean_err_median:.2%}, max {check.mean_err_max:.2%}, traffic-weighted "
            f"input {check.input_err_weighted:+.2%} output {check.output_err_weighted:+.2%}; "
            f"sums digest {check.sums_digest}"
        )
    write_licences(args.dest, licence_section(packed))
    for src, check, _, _ in packed:
        if not max(abs(check.input_err_weighted), abs(check.output_err_weighted)) < 0.02:
            raise SystemExit(f"servegen-{src.name}: the quantiles lose more than 2% of the load")


if __name__ == "__main__":
    main()
