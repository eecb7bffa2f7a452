"""The Triton paged split-KV kernel under Triton's CPU interpreter, against float32 attention.

Skipped where triton is not installed (CI installs neither triton nor a CUDA torch), and where
the installed Triton's interpreter cannot run a loop with data-dependent bounds (Triton < 3.8
with numpy >= 2.4 converts a 1-element array with int(), which numpy 2.4 refuses): the kernel is
unchanged, only its CPU check is impossible there.
"""

from __future__ import annotations

import os

# Triton fixes its interpreter mode when it is first imported; nothing else in the test session
# imports it (torch imports it lazily, for compilation only).
os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from l4.profiler import kernels  # noqa: E402
from l4.profiler.grid import BatchLayout, HeadShape, PrefillSpec  # noqa: E402

CPU = torch.device("cpu")
# Triton 3.6's interpreter turns 1-element arrays into loop bounds with int(), which numpy 1.25
# to 2.3 merely deprecate (the project's filterwarnings would make that an error)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"
)


@triton.jit  # type: ignore[untyped-decorator,misc,unused-ignore]
def _dynamic_loop(out_ptr, n_ptr):  # type: ignore[no-untyped-def]
    acc = 0.0
    for _ in range(0, tl.load(n_ptr)):
        acc += 1.0
    tl.store(out_ptr, acc)


def _interpreter_problem() -> str | None:
    out, n = torch.zeros(1), torch.tensor([3], dtype=torch.int32)
    try:
        _dynamic_loop[(1,)](out, n)
    except Exception as exc:
        return (
            f"Triton {triton.__version__}'s interpreter cannot run a data-dependent loop with "
            f"numpy {np.__version__} ({type(exc).__name__}); Triton >= 3.8 or numpy < 2.4 can"
        )
    assert float(out[0]) == 3.0
    return None


@pytest.fixture(scope="module")
def interpreter() -> None:
    problem = _interpreter_problem()
    if problem is not None:
        pytest.skip(problem)


def test_launch_plan_follows_vllm_policy() -> None:
    from l4.profiler.triton_attention import VLLM_POLICY, plan_launch

    # 32 query / 8 KV heads: groups of 4, 16-row blocks hold 4 query tokens
    few = plan_launch((1, 1, 1), 32, 8, VLLM_POLICY)
    assert (few.group, few.block_m, few.block_q) == (4, 16, 4)
    assert few.block_seq == (0, 1, 2) and few.block_first == (0, 0, 0)
    assert (few.num_splits, few.tile_tokens) == (16, 16)  # 3 x 8 = 24 programs <= 128: split
    many = plan_launch((1,) * 17, 32, 8, VLLM_POLICY)  # 17 x 8 = 136 programs: no split
    assert (many.num_splits, many.tile_tokens) == (1, 32)
    mixed = plan_launch((1, 1, 9), 32, 8, VLLM_POLICY)  # a prefill chunk: never split
    assert mixed.block_seq == (0, 1, 2, 2, 2) and mixed.block_first == (0, 0, 0, 4, 8)
    assert mixed.num_splits == 1
    # 24 / 8 heads (Llama-3.2-3B): groups of 3, 5 query tokens per 16 rows (one row idle)
    assert plan_launch((11,), 24, 8, VLLM_POLICY).block_first == (0, 5, 10)
    # a group above 16 rounds the block up to a power of two
    wide = plan_launch((2,), 64, 2, VLLM_POLICY)
    assert (wide.block_m, wide.block_q) == (32, 1)


@pytest.mark.parametrize(
    ("head", "layouts"),
    [
        (
            HeadShape(num_q_heads=4, num_kv_heads=2, head_dim=16),
            (
                BatchLayout(decode_kv_tokens=(5, 40, 70)),  # split into 16 segments + merge
                BatchLayout(
                    decode_kv_tokens=(5, 40, 70),
                    prefill=PrefillSpec(chunk_tokens=12, prior_tokens=9),
                ),
            ),
        ),
        (
            HeadShape(num_q_heads=6, num_kv_heads=2, head_dim=16),  # groups of 3, like 3B
            (
                BatchLayout(decode_kv_tokens=(9, 33)),
                BatchLayout(
                    decode_kv_tokens=(), prefill=PrefillSpec(chunk_tokens=11, prior_tokens=4)
                ),
            ),
        ),
    ],
)
def test_triton_kernel_matches_float32_attention(
    interpreter: None, head: HeadShape, layouts: tuple[BatchLayout, ...]
) -> None:
    spec = kernels.resolve_kernel("triton", CPU, page_tokens=16)
    assert spec.paged and "interpreted" in spec.implementation
    pool = kernels.allocate_pool(
        head, num_pages=24, page_tokens=16, device=CPU, dtype=torch.float32, seed=9
    )
    # each layout in the whole pool and again in a few shared pages
    assert kernels.check_kernel(spec, head, pool, seed=4, layouts=layouts) < 1e-4


COMPILE_FOR_HOPPER = textwrap.dedent(
    """
    import inspect, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from l4.profiler import triton_attention as ta

    def signature(kernel, types, constants):
        names = inspect.signature(kernel.fn).parameters
        return {n: "constexpr" if n in constants else types(n) for n in names}

    def attention_type(n):
        if n in ("q_ptr", "k_ptr", "v_ptr", "out_ptr"):
            return "*bf16"
        if n.startswith("part_"):
            return "*fp32"
        return "*i32" if n.endswith("_ptr") else "fp32" if n == "scale" else "i64"

    target = GPUTarget("cuda", 90, 32)  # an H100 / H200
    for group, splits in ((4, 1), (4, 16), (3, 1), (3, 16)):
        c = dict(NUM_Q_HEADS=8 * group, GROUP=group, BLOCK_Q=16 // group, BLOCK_M=16,
                 HEAD_DIM=128, PAGE=16, TILE=32 if splits == 1 else 16, NUM_SPLITS=splits)
        k = ta._attention_kernel
        triton.compile(ASTSource(k, signature(k, attention_type, c), c), target=target)
    c = dict(NUM_Q_HEADS=32, HEAD_DIM=128, NUM_SPLITS=16)
    merge_type = lambda n: "*bf16" if n == "out_ptr" else "*fp32" if n.endswith("_ptr") else "i64"
    k = ta._merge_kernel
    triton.compile(ASTSource(k, signature(k, merge_type, c), c), target=target)
    print("compiled")
    """
)


def test_the_kernels_compile_for_hopper() -> None:
    # Triton's real compiler (not the interpreter) down to sm_90 machine code, with the bundled
    # ptxas: what the GPU machine will run, minus the launch. A fresh process, since this one
    # imported Triton in interpreter mode.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_HOPPER],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
