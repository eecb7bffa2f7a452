"""Parsers for L4's native trace formats: JSONL and CSV, optionally gzip-compressed.

JSONL: one object per line, ``{"arrival_s": float, "input_tokens": int, "output_tokens": int}``;
extra keys are ignored, blank lines skipped. CSV: a header naming ``input_tokens`` and
``output_tokens`` and optionally ``arrival_s`` (extra columns ignored). ``arrival_s`` is given on
every row or on none.

Guarantees: a returned ``TraceData`` has at least one request, tokens >= 1, arrivals finite, >= 0
and sorted (stably: rows given out of order are sorted, not rejected). Anything else raises
``WorkloadError`` with one line ``<where>:<line>: <problem>``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from l4.errors import WorkloadError

ARRIVAL = "arrival_s"
INPUT = "input_tokens"
OUTPUT = "output_tokens"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TraceData:
    """Parsed columns of a trace; arrays are read-only so cached copies stay intact."""

    arrival_s: npt.NDArray[np.float64] | None
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]

    @property
    def num_requests(self) -> int:
        return len(self.input_tokens)


class _Rows:
    """Accumulates validated rows; knows where it reads from for error messages."""

    def __init__(self, where: str, *, text_cells: bool) -> None:
        self.where = where
        # CSV cells are text to convert; in JSON a quoted number is a type error.
        self.text_cells = text_cells
        self.arrivals: list[float] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.has_arrival: bool | None = None
        self.first_line = 0

    def fail(self, line: int, problem: str) -> WorkloadError:
        return WorkloadError(f"{self.where}:{line}: {problem}")

    def tokens(self, line: int, key: str, value: object) -> int:
        if self.text_cells and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise self.fail(line, f"{key} must be an integer, got {value!r}") from None
        # bool is an int subclass in Python; true/false are not token counts.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(line, f"{key} must be an integer, got {value!r}")
        if value < 1:
            raise self.fail(line, f"{key} must be >= 1, got {value}")
        return value

    def arrival(self, line: int, value: object) -> float:
        if self.text_cells and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise self.fail(line, f"{ARRIVAL} must be a number, got {value!r}") from None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(line, f"{ARRIVAL} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise self.fail(line, f"{ARRIVAL} must be finite and >= 0, got {value}")
        return float(value)

    def add(self, line: int, arrival: object | None, inp: object, out: object) -> None:
        given = arrival is not None
        if self.has_arrival is None:
            self.has_arrival, self.first_line = given, line
        elif given != self.has_arrival:
            state = "given" if given else "missing"
            other = "missing" if given else "given"
            raise self.fail(
                line,
                f"{ARRIVAL} {state} here but {other} on line {self.first_line}; "
                "give it on every request or on none",
            )
        if arrival is not None:
            self.arrivals.append(self.arrival(line, arrival))
        self.inputs.append(self.tokens(line, INPUT, inp))
        self.outputs.append(self.tokens(line, OUTPUT, out))

    def finish(self) -> TraceData:
        if not self.inputs:
            raise WorkloadError(f"{self.where}: empty trace (no requests)")
        inputs = np.array(self.inputs, dtype=np.int64)
        outputs = np.array(self.outputs, dtype=np.int64)
        arrivals = np.array(self.arrivals, dtype=np.float64) if self.has_arrival else None
        if arrivals is not None and np.any(np.diff(arrivals) < 0):
            # Out-of-order logs are common (merged shards); a stable sort keeps ties in file order.
            order = np.argsort(arrivals, kind="stable")
            arrivals, inputs, outputs = arrivals[order], inputs[order], outputs[order]
        for array in (arrivals, inputs, outputs):
            if array is not None:
                array.flags.writeable = False
        return TraceData(arrival_s=arrivals, input_tokens=inputs, output_tokens=outputs)


def parse_jsonl(lines: Iterable[str], where: str) -> TraceData:
    """Parse JSONL text given as lines; ``where`` names the source in error messages."""
    rows = _Rows(where, text_cells=False)
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise rows.fail(number, f"malformed JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(record, dict):
            raise rows.fail(number, f"expected a JSON object, got {type(record).__name__}")
        for key in (INPUT, OUTPUT):
            if key not in record:
                raise rows.fail(number, f"missing key {key!r}")
        if ARRIVAL in record and record[ARRIVAL] is None:
            raise rows.fail(number, f"{ARRIVAL} must be a number, got null")
        rows.add(number, record.get(ARRIVAL), record[INPUT], record[OUTPUT])
    return rows.finish()


def parse_csv(text: str, where: str) -> TraceData:
    """Parse CSV text with a header row; ``where`` names the source in error messages."""
    rows = _Rows(where, text_cells=True)
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for record in reader:
        if not record or all(not cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip() for cell in record]
            if INPUT not in header or OUTPUT not in header:
                raise rows.fail(
                    reader.line_num,
                    f"CSV header must name {INPUT} and {OUTPUT} ({ARRIVAL} optional), "
                    f"got {','.join(header)!r}",
                )
            i_in, i_out = header.index(INPUT), header.index(OUTPUT)
            i_arr = header.index(ARRIVAL) if ARRIVAL in header else None
            continue
        if len(record) != len(header):
            raise rows.fail(reader.line_num, f"expected {len(header)} fields, got {len(record)}")
        arrival = record[i_arr] if i_arr is not None else None
        rows.add(reader.line_num, arrival, record[i_in], record[i_out])
    return rows.finish()


def _read_text(path: Path) -> str:
    if not path.exists():
        raise WorkloadError(f"trace file not found: {path}")
    if path.is_dir():
        raise WorkloadError(f"{path}: is a directory, not a trace file")
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot read trace: {exc}") from None


def read_trace_file(path: Path) -> TraceData:
    """Read a native trace: ``.csv`` (or ``.csv.gz``) as CSV, anything else as JSONL."""
    text = _read_text(path)
    name = path.name.removesuffix(".gz")
    if name.endswith(".csv"):
        return parse_csv(text, str(path))
    return parse_jsonl(text.split("\n"), str(path))
