"""Validation of OpenAI-style request bodies, by hand, at the HTTP edge.

Guarantees: `parse_completion`, `parse_chat`, `parse_tokenize` and `parse_detokenize` either
return a request whose every field is in range, or raise `ValidationError` with a one-line message
naming the field (the server turns it into HTTP 400). Fields the emulated engine cannot honour
(n > 1, best_of > 1, logprobs, echo, batched prompts) are rejected, never silently ignored.
Sampling knobs that do not change lengths or timing are checked as vLLM checks them
(`vllm/sampling_params.py`, `SamplingParams._verify_args`, and the int64 range of `seed` in its
OpenAI protocol) and then ignored: temperature in [0, 2], top_p in (0, 1], top_k an integer
>= -1, min_p in [0, 1], presence and frequency penalties in [-2, 2], repetition_penalty > 0, all
finite numbers (JSON null means the default). Types are strict: a number given as a string is
refused (vLLM's pydantic models would coerce "0.5"; no OpenAI client sends one).

A text prompt is tokenised at most `max_prompt_tokens` + 1 tokens far, and a token-id prompt longer
than that is refused before its ids are checked: a prompt too long for the context costs little.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from l4.engine.tokenizer import Tokenizer
from l4.errors import ValidationError

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
_INT64 = (-(2**63), 2**63 - 1)
# Sampling knobs: name -> (low, high, low bound included, high bound included).
_FLOAT_RANGES = {
    "temperature": (0.0, 2.0, True, True),
    "top_p": (0.0, 1.0, False, True),
    "min_p": (0.0, 1.0, True, True),
    "presence_penalty": (-2.0, 2.0, True, True),
    "frequency_penalty": (-2.0, 2.0, True, True),
    "repetition_penalty": (0.0, math.inf, False, False),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateRequest:
    model: str | None
    prompt_ids: tuple[int, ...]
    max_tokens: int | None
    min_tokens: int
    ignore_eos: bool
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    continuous_usage: bool
    return_token_ids: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizerAnswer:
    """The answer of /tokenize or /detokenize, JSON-encoded where it was computed (a large one
    in the parsing worker: encoding millions of ids would stall the event loop)."""

    model: str | None
    body: bytes


def encode_json(value: Any) -> bytes:
    """JSON as Starlette's JSONResponse renders it (compact, UTF-8)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def decode_json(raw: bytes) -> Any:
    """The JSON value of a request body, or `ValidationError`."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"the request body is not valid JSON ({exc})") from None


def context_error(limit: int, prompt_tokens: int | str) -> ValidationError:
    """vLLM's message for a prompt that leaves no room in the context."""
    return ValidationError(
        f"This model's maximum context length is {limit} tokens. However, your prompt has "
        f"{prompt_tokens} tokens; please reduce its length."
    )


def _get(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    # JSON true/false are Python bools, which are ints too: never accept one for the other.
    if value is None or (isinstance(value, kind) and not (isinstance(value, bool) and kind is int)):
        return value
    raise ValidationError(f"'{name}' must be {what}, got {type(value).__name__}")


def _int(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value: int | None = _get(body, name, int, "an integer")
    if value is not None and value < minimum:
        raise ValidationError(f"'{name}' must be >= {minimum}, got {value}")
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    return bool(_get(body, name, bool, "a boolean"))


def _check_sampling(body: dict[str, Any]) -> None:
    """Refuse sampling knobs vLLM refuses; their values change nothing here."""
    for name, (low, high, low_in, high_in) in _FLOAT_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"'{name}' must be a number, got {type(value).__name__}")
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        if not (math.isfinite(value) and above and below):
            if high == math.inf:
                raise ValidationError(f"'{name}' must be a finite number > {low:g}, got {value}")
            left, right = "[" if low_in else "(", "]" if high_in else ")"
            raise ValidationError(
                f"'{name}' must be in {left}{low:g}, {high:g}{right}, got {value}"
            )
    _int(body, "top_k", minimum=-1)  # 0 and -1 both mean "all tokens", as in vLLM
    seed = _get(body, "seed", int, "an integer")
    if seed is not None and not _INT64[0] <= seed <= _INT64[1]:
        raise ValidationError(f"'seed' must fit in a signed 64-bit integer, got {seed}")


def _token_ids(value: list[Any], tok: Tokenizer, name: str) -> tuple[int, ...]:
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ValidationError(f"'{name}' must be a string or a list of token ids")
    tok.check_ids(value)
    return tuple(value)


def _text_ids(text: str, tok: Tokenizer, max_prompt_tokens: int | None) -> tuple[int, ...]:
    ids = tok.tokenize(text, stop_after=max_prompt_tokens)
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise context_error(max_prompt_tokens, f"more than {max_prompt_tokens}")
    return tuple(ids)


def _prompt_ids(value: Any, tok: Tokenizer, max_prompt_tokens: int | None) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]  # a batch of one is just a prompt
    if isinstance(value, str):
        ids = _text_ids(value, tok, max_prompt_tokens)
    elif isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        raise ValidationError(
            f"batched prompts are not supported ({len(value)} prompts); send one request per prompt"
        )
    elif isinstance(value, list):
        if max_prompt_tokens is not None and len(value) > max_prompt_tokens:
            raise context_error(max_prompt_tokens, len(value))  # before checking every id
        ids = _token_ids(value, tok, "prompt")
    else:
        raise ValidationError("'prompt' must be a string, a list of one string, or token ids")
    if not ids:
        raise ValidationError("the prompt cannot be empty")
    return ids


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise ValidationError("'stop' must be a non-empty string or a list of them")
    return tuple(value)


def _common(body: dict[str, Any], prompt_ids: tuple[int, ...], max_name: str) -> GenerateRequest:
    n = _int(body, "n", minimum=1)
    if n is not None and n > 1:
        raise ValidationError(f"'n' = {n} is not supported by the emulated engine; use n = 1")
    best_of = _int(body, "best_of", minimum=1)
    if best_of is not None and best_of > 1:
        raise ValidationError("'best_of' > 1 is not supported by the emulated engine")
    max_tokens = _int(body, max_name, minimum=1)
    if max_tokens is None and max_name != "max_tokens":
        max_tokens = _int(body, "max_tokens", minimum=1)
    min_tokens = _int(body, "min_tokens", minimum=0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise ValidationError(f"'min_tokens' ({min_tokens}) must be <= '{max_name}' ({max_tokens})")
    _check_sampling(body)
    stream = _bool(body, "stream")
    options = _get(body, "stream_options", dict, "an object") or {}
    if options and not stream:
        raise ValidationError("'stream_options' can only be set when 'stream' is true")
    include_usage = _bool(options, "include_usage")
    return GenerateRequest(
        model=_get(body, "model", str, "a string"),
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=_bool(body, "ignore_eos"),
        stop=_stop(body),
        stream=stream,
        include_usage=include_usage,
        # As in vLLM, continuous usage needs include_usage as well.
        continuous_usage=include_usage and _bool(options, "continuous_usage_stats"),
        return_token_ids=_bool(body, "return_token_ids"),
    )


def parse_completion(
    body: Any, tok: Tokenizer, *, max_prompt_tokens: int | None = None
) -> GenerateRequest:
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    if "prompt" not in body:
        raise ValidationError("'prompt' is required")
    if body.get("logprobs") is not None:
        raise ValidationError("'logprobs' is not supported by the emulated engine")
    if _bool(body, "echo"):
        raise ValidationError("'echo' is not supported by the emulated engine")
    return _common(body, _prompt_ids(body["prompt"], tok, max_prompt_tokens), "max_tokens")


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise ValidationError(f"messages[{i}]: only text content parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise ValidationError(f"messages[{i}]: a text part needs a 'text' string")
            parts.append(text)
        return "\n".join(parts)
    if content is None:
        return ""
    raise ValidationError(f"messages[{i}].content must be a string or a list of text parts")


def chat_prompt_text(messages: Any) -> str:
    """The prompt a simple chat template makes of `messages` (roles as marker lines)."""
    if not isinstance(messages, list) or not messages:
        raise ValidationError("'messages' must be a non-empty list")
    lines: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValidationError(f"messages[{i}] must be an object")
        role = msg.get("role")
        if role not in CHAT_ROLES:
            raise ValidationError(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}")
        lines.append(f"<|{role}|>\n{_content_text(msg.get('content'), i)}\n")
    lines.append("<|assistant|>\n")
    return "".join(lines)


def parse_chat(
    body: Any, tok: Tokenizer, *, max_prompt_tokens: int | None = None
) -> GenerateRequest:
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    if _bool(body, "logprobs"):
        raise ValidationError("'logprobs' is not supported by the emulated engine")
    prompt = _text_ids(chat_prompt_text(body.get("messages")), tok, max_prompt_tokens)
    return _common(body, prompt, "max_completion_tokens")


def parse_tokenize(body: Any, tok: Tokenizer, *, max_model_len: int) -> TokenizerAnswer:
    """vLLM's /tokenize: a `prompt` string or chat `messages`; tokenised whole, as vLLM does."""
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    if "messages" in body:
        text = chat_prompt_text(body["messages"])
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        raise ValidationError("'prompt' (a string) or 'messages' is required")
    model = _get(body, "model", str, "a string")
    with_strs = _bool(body, "return_token_strs")
    ids = tok.tokenize(text)
    answer = {
        "count": len(ids),
        "max_model_len": max_model_len,
        "tokens": ids,
        "token_strs": [tok.piece(t) for t in ids] if with_strs else None,
    }
    return TokenizerAnswer(model=model, body=encode_json(answer))


def parse_detokenize(body: Any, tok: Tokenizer) -> TokenizerAnswer:
    """vLLM's /detokenize: `tokens`, a list of token ids."""
    if not isinstance(body, dict) or not isinstance(body.get("tokens"), list):
        raise ValidationError("'tokens' (a list of token ids) is required")
    ids = body["tokens"]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValidationError("'tokens' must be a list of integers")
    model = _get(body, "model", str, "a string")
    return TokenizerAnswer(model=model, body=encode_json({"prompt": tok.detokenize(ids)}))
