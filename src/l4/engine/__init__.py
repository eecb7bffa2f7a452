"""The emulated engine: vLLM's OpenAI API over the simulator's instance, stepping in real time.

Map: `tokenizer` (shipped deterministic tokenizer), `generation` (output lengths and tokens),
`core` (the step loop: real scheduler, sleeping GPU), `output` (text deltas, stop strings),
`protocol` (request validation), `metrics` (Prometheus, vLLM names), `server` (Starlette routes),
`cli` (`l4 engine`).
"""

from l4.engine.core import EngineCore, Handle
from l4.engine.server import EmulatedEngine, EngineConfig, build_app
from l4.engine.tokenizer import Tokenizer

__all__ = ["EmulatedEngine", "EngineConfig", "EngineCore", "Handle", "Tokenizer", "build_app"]
