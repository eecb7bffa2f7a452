"""Validation of OpenAI-style request bodies, by hand, at the HTTP edge.

Guarantees: `parse_completion` and `parse_chat` either return a `GenerateRequest` whose every
field is in range, or raise `ValidationError` with a one-line message naming the field (the
server turns it into HTTP 400). Fields the emulated engine cannot honour (n > 1, best_of > 1,
logprobs, echo, batched prompts) are rejected, never silently ignored. Sampling knobs that do
not change lengths or timing (temperature, top_p, seed, ...) are accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l4.engine.tokenizer import Tokenizer
from l4.errors import ValidationError

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


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


def _token_ids(value: list[Any], tok: Tokenizer, name: str) -> tuple[int, ...]:
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ValidationError(f"'{name}' must be a string or a list of token ids")
    tok.check_ids(value)
    return tuple(value)


def _prompt_ids(value: Any, tok: Tokenizer) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]  # a batch of one is just a prompt
    if isinstance(value, str):
        ids = tuple(tok.tokenize(value))
    elif isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        raise ValidationError(
            f"batched prompts are not supported ({len(value)} prompts); send one request per prompt"
        )
    elif isinstance(value, list):
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


def parse_completion(body: Any, tok: Tokenizer) -> GenerateRequest:
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    if "prompt" not in body:
        raise ValidationError("'prompt' is required")
    if body.get("logprobs") is not None:
        raise ValidationError("'logprobs' is not supported by the emulated engine")
    if _bool(body, "echo"):
        raise ValidationError("'echo' is not supported by the emulated engine")
    return _common(body, _prompt_ids(body["prompt"], tok), "max_tokens")


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


def parse_chat(body: Any, tok: Tokenizer) -> GenerateRequest:
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    if _bool(body, "logprobs"):
        raise ValidationError("'logprobs' is not supported by the emulated engine")
    prompt = tuple(tok.tokenize(chat_prompt_text(body.get("messages"))))
    return _common(body, prompt, "max_completion_tokens")
