"""What the gateway reads of an OpenAI request body, and which requests may move.

The gateway validates only what it acts on (the model, streaming options, token budgets, stop
strings, the prompt's shape); everything else is the engine's to check, and every field it does not
know is passed through. A request may move between instances (token replay) only if its state is
fully held in its token ids; otherwise it is *pinned* to the instance it was routed to, and its
body goes to that engine as the client sent it (as Dynamo does for guided decoding):

* several outputs (`n > 1`, `best_of > 1`, beam search): one stream per output, not one sequence;
* guided / structured output (`guided_*`, `structured_outputs`, a non-text `response_format`):
  the grammar's state at the cut is not in the token ids;
* tools (chat): the engine parses tool calls from text the gateway would have to re-parse;
* log-probabilities (`logprobs`, `prompt_logprobs`), `echo`, `suffix`, batched prompts, and
  multimodal chat content: their answers are shaped by the engine, not by the token stream alone.

Guarantees: `parse_request` returns a `ClientRequest` or raises `ValidationError` (HTTP 400) with
a one-line message naming the field; it never changes the body it was given.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from l4.errors import ValidationError

Json = dict[str, Any]


class Endpoint(enum.Enum):
    COMPLETIONS = "/v1/completions"
    CHAT = "/v1/chat/completions"


# Fields the gateway owns on the replay path; every other field is passed through to the engine.
_OWNED = frozenset(
    {
        "model", "prompt", "messages", "stream", "stream_options", "max_tokens",
        "max_completion_tokens", "min_tokens", "stop", "include_stop_str_in_output", "n",
        "return_token_ids", "best_of", "use_beam_search",
    }
)  # fmt: skip
# Chat fields that shape the prompt (they go to /tokenize, not to the completion).
TEMPLATE_FIELDS = (
    "add_generation_prompt", "continue_final_message", "add_special_tokens", "chat_template",
    "chat_template_kwargs", "documents", "tools",
)  # fmt: skip
_CHAT_ONLY = frozenset(
    {*TEMPLATE_FIELDS, "tool_choice", "parallel_tool_calls", "response_format", "top_logprobs",
     "logprobs", "echo", "mm_processor_kwargs", "reasoning_effort"}
)  # fmt: skip
_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequest:
    endpoint: Endpoint
    body: Json  # as the client sent it
    model: str | None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    max_tokens: int | None
    min_tokens: int
    stop: tuple[str, ...]
    include_stop: bool
    return_token_ids: bool
    pin_reason: str | None  # why it cannot move; None: it can
    prompt_ids: tuple[int, ...] | None = None  # the client sent token ids
    prompt_texts: tuple[str, ...] = ()  # the client sent text (one per prompt)
    passthrough: Json = field(default_factory=dict)  # fields sent on to the engine when replayed

    @property
    def chat(self) -> bool:
        return self.endpoint is Endpoint.CHAT


def _typed(body: Json, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    # JSON true/false are Python bools, which are ints too: never accept one for the other.
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ValidationError(f"'{name}' must be {what}, got a boolean")
    if not isinstance(value, kind):
        raise ValidationError(f"'{name}' must be {what}, got {type(value).__name__}")
    return value


def _int(body: Json, name: str, minimum: int) -> int | None:
    value: int | None = _typed(body, name, int, "an integer")
    if value is not None and value < minimum:
        raise ValidationError(f"'{name}' must be >= {minimum}, got {value}")
    return value


def _bool(body: Json, name: str) -> bool:
    return bool(_typed(body, name, bool, "a boolean"))


def _stop(body: Json) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValidationError("'stop' must be a string or a list of strings")
    return tuple(s for s in value if s)


def is_token_ids(value: Any) -> bool:
    # Exactly int (a bool is not a token id), iterated in C: a 100K-token prompt's ids are
    # checked in ~3 ms instead of ~14 ms of the relay's loop (every stream waits meanwhile).
    return isinstance(value, list) and all(map(operator.is_, map(type, value), repeat(int)))


def _prompt(body: Json) -> tuple[tuple[int, ...] | None, tuple[str, ...], str | None]:
    """(token ids, texts, pin reason) of a completions prompt."""
    if "prompt" not in body:
        raise ValidationError("'prompt' is required")
    value = body["prompt"]
    if isinstance(value, str):
        if not value:
            raise ValidationError("the prompt cannot be empty")
        return None, (value,), None
    if is_token_ids(value):
        if not value:
            raise ValidationError("the prompt cannot be empty")
        if min(value) < 0:
            raise ValidationError("'prompt' token ids must be >= 0")
        return tuple(value), (), None
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            if len(value) == 1:
                return (*_prompt({"prompt": value[0]})[:2], None)
            return None, tuple(value), "batched prompts"
        if all(is_token_ids(p) for p in value):
            if len(value) == 1:
                return (*_prompt({"prompt": value[0]})[:2], None)
            return None, (), "batched prompts"
    raise ValidationError("'prompt' must be a string, token ids, or a list of either")


def _chat_content_pin(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        raise ValidationError("'messages' must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValidationError(f"messages[{i}] must be an object")
        if not isinstance(msg.get("role"), str):
            raise ValidationError(f"messages[{i}].role must be a string")
        content = msg.get("content")
        if isinstance(content, list) and any(
            not (isinstance(p, dict) and p.get("type") == "text") for p in content
        ):
            return "multimodal content"
    return None


def _pin_reason(endpoint: Endpoint, body: Json) -> str | None:
    n = _int(body, "n", 1)
    if n is not None and n > 1:
        return "n > 1"
    best_of = _int(body, "best_of", 1)
    if best_of is not None and best_of > 1:
        return "best_of > 1"
    if body.get("use_beam_search"):
        return "beam search"
    for name in _GUIDED:
        if body.get(name) is not None:
            return "guided decoding"
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        return "structured output"
    if endpoint is Endpoint.CHAT:
        if body.get("tools"):
            return "tools"
        if body.get("logprobs"):
            return "logprobs"
    elif body.get("logprobs") is not None:
        return "logprobs"
    if body.get("prompt_logprobs") is not None:
        return "prompt logprobs"
    if body.get("echo"):
        return "echo"
    if body.get("suffix") is not None:
        return "suffix"
    return None


def parse_request(endpoint: Endpoint, body: Any) -> ClientRequest:
    if not isinstance(body, dict):
        raise ValidationError("the request body must be a JSON object")
    model = _typed(body, "model", str, "a string")
    stream = _bool(body, "stream")
    options = _typed(body, "stream_options", dict, "an object") or {}
    if options and not stream:
        raise ValidationError("'stream_options' can only be set when 'stream' is true")
    include_usage = _bool(options, "include_usage")
    if endpoint is Endpoint.CHAT:
        max_tokens = _int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _int(body, "max_tokens", 1)
        pin = _chat_content_pin(body.get("messages"))
        prompt_ids: tuple[int, ...] | None = None
        texts: tuple[str, ...] = ()
    else:
        max_tokens = _int(body, "max_tokens", 1)
        prompt_ids, texts, pin = _prompt(body)
    min_tokens = _int(body, "min_tokens", 0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise ValidationError(f"'min_tokens' ({min_tokens}) must be <= the maximum ({max_tokens})")
    pin = pin or _pin_reason(endpoint, body)
    dropped = _OWNED | _CHAT_ONLY if endpoint is Endpoint.CHAT else _OWNED
    return ClientRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage,
        # As in vLLM, continuous usage needs include_usage as well.
        continuous_usage=include_usage and _bool(options, "continuous_usage_stats"),
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        stop=_stop(body),
        include_stop=_bool(body, "include_stop_str_in_output"),
        return_token_ids=_bool(body, "return_token_ids"),
        pin_reason=pin,
        prompt_ids=prompt_ids,
        prompt_texts=texts,
        passthrough={k: v for k, v in body.items() if k not in dropped},
    )


def tokenize_body(req: ClientRequest, model: str) -> Json:
    """The /tokenize request that turns a chat (or a text prompt) into the engine's token ids."""
    if req.chat:
        out: Json = {"model": model, "messages": req.body["messages"]}
        for name in TEMPLATE_FIELDS:
            if name in req.body:
                out[name] = req.body[name]
        out.setdefault("add_generation_prompt", True)
        return out
    return {"model": model, "prompt": req.prompt_texts[0]}
