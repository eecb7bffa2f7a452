"""Native trace files: JSONL and CSV parsing, and one clear error line per malformed input."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from l4.errors import UnknownNameError, ValidationError, WorkloadError
from l4.workload import WorkloadSpec, build_workload
from l4.workload.formats import read_trace_file


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records: dict[str, object]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_jsonl_with_arrivals_extra_keys_and_blank_lines(tmp_path: Path) -> None:
    text = (
        '{"arrival_s": 1.5, "input_tokens": 10, "output_tokens": 3, "user": "a"}\n'
        "\n"
        '{"arrival_s": 2.0, "input_tokens": 20, "output_tokens": 4}\n'
        "   \n"
    )
    data = read_trace_file(write(tmp_path, "t.jsonl", text))
    assert data.arrival_s is not None
    assert data.arrival_s.tolist() == [1.5, 2.0]
    assert data.input_tokens.tolist() == [10, 20]
    assert data.output_tokens.tolist() == [3, 4]


def test_jsonl_without_arrivals(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", jsonl({"input_tokens": 5, "output_tokens": 6}))
    data = read_trace_file(path)
    assert data.arrival_s is None
    assert data.num_requests == 1


def test_csv_with_and_without_arrivals(tmp_path: Path) -> None:
    with_arr = write(tmp_path, "a.csv", "arrival_s,input_tokens,output_tokens\n0.5,7,8\n1,9,10\n")
    data = read_trace_file(with_arr)
    assert data.arrival_s is not None and data.arrival_s.tolist() == [0.5, 1.0]
    assert data.input_tokens.tolist() == [7, 9]
    # Column order is free and extra columns are ignored.
    no_arr = write(tmp_path, "b.csv", "output_tokens,note,input_tokens\n8,x,7\n")
    data = read_trace_file(no_arr)
    assert data.arrival_s is None
    assert (data.input_tokens.tolist(), data.output_tokens.tolist()) == ([7], [8])


def test_gzip_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl({"input_tokens": 5, "output_tokens": 6}).encode()))
    assert read_trace_file(path).input_tokens.tolist() == [5]
    csv_path = tmp_path / "t.csv.gz"
    csv_path.write_bytes(gzip.compress(b"input_tokens,output_tokens\n3,4\n"))
    assert read_trace_file(csv_path).output_tokens.tolist() == [4]


def test_unsorted_arrivals_are_sorted_stably(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.jsonl",
        jsonl(
            {"arrival_s": 3.0, "input_tokens": 1, "output_tokens": 1},
            {"arrival_s": 1.0, "input_tokens": 2, "output_tokens": 1},
            {"arrival_s": 3.0, "input_tokens": 3, "output_tokens": 1},
            {"arrival_s": 1.0, "input_tokens": 4, "output_tokens": 1},
        ),
    )
    data = read_trace_file(path)
    assert data.arrival_s is not None
    assert data.arrival_s.tolist() == [1.0, 1.0, 3.0, 3.0]
    assert data.input_tokens.tolist() == [2, 4, 1, 3]
    assert not data.input_tokens.flags.writeable


@pytest.mark.parametrize(
    ("name", "text", "line", "fragment"),
    [
        ("t.jsonl", '{"input_tokens": 1, "output_tokens": 1}\n{"input_tokens": 1,\n', 2, "JSON"),
        ("t.jsonl", '{"input_tokens": 1}\n', 1, "'output_tokens'"),
        ("t.jsonl", '\n\n{"output_tokens": 1}\n', 3, "'input_tokens'"),
        ("t.jsonl", "[1, 2]\n", 1, "JSON object"),
        ("t.jsonl", '{"input_tokens": 1.5, "output_tokens": 1}\n', 1, "integer"),
        ("t.jsonl", '{"input_tokens": "12", "output_tokens": 1}\n', 1, "integer"),
        ("t.jsonl", '{"input_tokens": true, "output_tokens": 1}\n', 1, "integer"),
        ("t.jsonl", '{"input_tokens": 0, "output_tokens": 1}\n', 1, ">= 1"),
        ("t.jsonl", '{"input_tokens": 5, "output_tokens": -2}\n', 1, ">= 1"),
        ("t.jsonl", '{"arrival_s": -1, "input_tokens": 5, "output_tokens": 2}\n', 1, ">= 0"),
        ("t.jsonl", '{"arrival_s": NaN, "input_tokens": 5, "output_tokens": 2}\n', 1, "finite"),
        ("t.jsonl", '{"arrival_s": "x", "input_tokens": 5, "output_tokens": 2}\n', 1, "number"),
        ("t.jsonl", '{"arrival_s": null, "input_tokens": 5, "output_tokens": 2}\n', 1, "number"),
        (
            "t.jsonl",
            '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 2}\n'
            '{"input_tokens": 5, "output_tokens": 2}\n',
            2,
            "arrival_s missing here",
        ),
        ("t.csv", "foo,bar\n1,2\n", 1, "header"),
        ("t.csv", "input_tokens,output_tokens\n1,2\n3\n", 3, "fields"),
        ("t.csv", "input_tokens,output_tokens\n1,2\n3.0,4\n", 3, "integer"),
        ("t.csv", "input_tokens,output_tokens\n1,0\n", 2, ">= 1"),
        ("t.csv", "arrival_s,input_tokens,output_tokens\n1,1,1\nsoon,1,1\n", 3, "number"),
        ("t.csv", "arrival_s,input_tokens,output_tokens\n-0.5,1,1\n", 2, ">= 0"),
    ],
)
def test_malformed_lines_name_file_and_line(
    tmp_path: Path, name: str, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(WorkloadError) as info:
        read_trace_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("e.jsonl", ""),
        ("b.jsonl", "\n  \n"),
        ("h.csv", "input_tokens,output_tokens\n"),
        ("z.csv", ""),
    ],
)
def test_empty_trace(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(WorkloadError, match="empty trace") as info:
        read_trace_file(path)
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    bad_gz = tmp_path / "t.jsonl.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(WorkloadError, match="cannot read trace"):
        read_trace_file(bad_gz)
    binary = tmp_path / "t.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WorkloadError, match="cannot read trace"):
        read_trace_file(binary)


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(WorkloadError, match=re.escape(f"trace file not found: {missing}")):
        build_workload(WorkloadSpec(trace=str(missing), max_context_tokens=100))
    # No slash but a suffix: still a path, not a name.
    with pytest.raises(WorkloadError, match=re.escape("trace file not found: nope.csv")):
        build_workload(WorkloadSpec(trace="nope.csv", max_context_tokens=100))
    with pytest.raises(UnknownNameError) as info:
        build_workload(WorkloadSpec(trace="moonkake", max_context_tokens=100))
    assert "mooncake" in str(info.value) and info.value.kind == "trace"


def test_directory_is_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="is a directory"):
        build_workload(WorkloadSpec(trace=str(tmp_path), max_context_tokens=100))


def test_native_file_without_arrivals_needs_rate(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", jsonl({"input_tokens": 5, "output_tokens": 6}) * 50)
    with pytest.raises(ValidationError, match="--rate"):
        build_workload(WorkloadSpec(trace=str(path), max_context_tokens=100))
    work = build_workload(WorkloadSpec(trace=str(path), max_context_tokens=100, rate_rps=2.0))
    assert not work.timestamped and len(work.requests) == 50
    assert work.name == "t.jsonl" and work.source == str(path)


def test_native_file_with_arrivals_starts_at_zero(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        "arrival_s,input_tokens,output_tokens\n10.0,5,5\n12.0,6,6\n11.0,7,7\n",
    )
    work = build_workload(WorkloadSpec(trace=str(path), max_context_tokens=100))
    assert work.timestamped
    assert [r.arrival_s for r in work.requests] == [0.0, 1.0, 2.0]
    assert [r.input_tokens for r in work.requests] == [5, 7, 6]
    assert [r.request_id for r in work.requests] == [0, 1, 2]
    assert np.isclose(work.mean_rate_rps, 1.5)
