"""The emulated engine: vLLM's OpenAI API over the simulator's instance, stepping in real time.

Map: `tokenizer` (shipped deterministic tokenizer), `generation` (output lengths and tokens),
`core` (the step loop: real scheduler, sleeping GPU), `output` (text deltas, stop strings),
`protocol` (request validation), `parsing` (large bodies parsed in a worker process), `metrics`
(Prometheus, vLLM names and labels), `faults` (error rate, crash, slow-down), `server`
(Starlette routes), `serving` (uvicorn, and a crash that drops the port), `replay` (a trace replay
client for any vLLM-compatible server), `cli` (`l4 engine`).

The names below are imported on first use: the body-parsing worker process imports
`l4.engine.protocol` and should not pay for Starlette, uvicorn and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from l4.engine.core import EngineCore, Handle, StepTiming
    from l4.engine.faults import FaultConfig
    from l4.engine.server import EmulatedEngine, EngineConfig, build_app
    from l4.engine.serving import EngineServer
    from l4.engine.tokenizer import Tokenizer

_EXPORTS = {
    "EmulatedEngine": "l4.engine.server",
    "EngineConfig": "l4.engine.server",
    "EngineCore": "l4.engine.core",
    "EngineServer": "l4.engine.serving",
    "FaultConfig": "l4.engine.faults",
    "Handle": "l4.engine.core",
    "StepTiming": "l4.engine.core",
    "Tokenizer": "l4.engine.tokenizer",
    "build_app": "l4.engine.server",
}

__all__ = [
    "EmulatedEngine",
    "EngineConfig",
    "EngineCore",
    "EngineServer",
    "FaultConfig",
    "Handle",
    "StepTiming",
    "Tokenizer",
    "build_app",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'l4.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
