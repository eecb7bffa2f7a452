"""The emulated engine: vLLM's OpenAI API over the simulator's instance, stepping in real time.

Map: `tokenizer` (shipped deterministic tokenizer), `generation` (output lengths and tokens),
`core` (the step loop: real scheduler, sleeping GPU), `output` (text deltas, stop strings),
`protocol` (request validation), `metrics` (Prometheus, vLLM names and labels), `faults` (error
rate, crash, slow-down), `server` (Starlette routes), `serving` (uvicorn, and a crash that drops
the port), `replay` (a trace replay client for any vLLM-compatible server), `cli` (`l4 engine`).
"""

from l4.engine.core import EngineCore, Handle, StepTiming
from l4.engine.faults import FaultConfig
from l4.engine.server import EmulatedEngine, EngineConfig, build_app
from l4.engine.serving import EngineServer
from l4.engine.tokenizer import Tokenizer

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
