"""Which client requests the gateway refuses, which it pins, and what it passes through."""

from __future__ import annotations

import re
from typing import Any

import pytest

from l4.errors import ValidationError
from l4.gateway.protocol import Endpoint, is_token_ids, parse_request, tokenize_body

C, CHAT = Endpoint.COMPLETIONS, Endpoint.CHAT
MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("endpoint", "body", "message"),
    [
        (C, [], "JSON object"),
        (C, {}, "'prompt' is required"),
        (C, {"prompt": ""}, "cannot be empty"),
        (C, {"prompt": []}, "cannot be empty"),
        (C, {"prompt": [1, -2]}, ">= 0"),
        (C, {"prompt": 5}, "'prompt' must be"),
        (C, {"prompt": "a", "max_tokens": 0}, "'max_tokens' must be >= 1"),
        (C, {"prompt": "a", "max_tokens": "9"}, "must be an integer"),
        (C, {"prompt": "a", "max_tokens": True}, "got a boolean"),
        (C, {"prompt": "a", "max_tokens": 2, "min_tokens": 3}, "'min_tokens' (3)"),
        (C, {"prompt": "a", "stream": "yes"}, "'stream' must be a boolean"),
        (C, {"prompt": "a", "stream_options": {"include_usage": True}}, "only be set"),
        (C, {"prompt": "a", "stop": 3}, "'stop' must be"),
        (C, {"prompt": "a", "model": 1}, "'model' must be a string"),
        (CHAT, {}, "'messages' must be a non-empty list"),
        (CHAT, {"messages": [1]}, "messages[0] must be an object"),
        (CHAT, {"messages": [{"content": "x"}]}, "messages[0].role"),
        (C, {"prompt": "a", "n": 0}, "'n' must be >= 1"),
    ],
)
def test_client_mistakes_are_refused_with_the_field_named(
    endpoint: Endpoint, body: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        parse_request(endpoint, body)


@pytest.mark.parametrize(
    ("endpoint", "extra", "reason"),
    [
        (C, {"n": 2}, "n > 1"),
        (C, {"best_of": 3}, "best_of > 1"),
        (C, {"use_beam_search": True}, "beam search"),
        (C, {"guided_json": {"type": "object"}}, "guided decoding"),
        (C, {"structured_outputs": {"regex": "a+"}}, "guided decoding"),
        (CHAT, {"response_format": {"type": "json_object"}}, "structured output"),
        (CHAT, {"tools": [{"type": "function"}]}, "tools"),
        (CHAT, {"logprobs": True}, "logprobs"),
        (C, {"logprobs": 0}, "logprobs"),
        (C, {"prompt_logprobs": 1}, "prompt logprobs"),
        (C, {"echo": True}, "echo"),
        (C, {"suffix": "z"}, "suffix"),
        (C, {"prompt": ["a", "b"]}, "batched prompts"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "multimodal content",
        ),
    ],
)
def test_what_cannot_move_is_pinned(endpoint: Endpoint, extra: dict[str, Any], reason: str) -> None:
    body = {"prompt": "a"} if endpoint is C else {"messages": MSG}
    assert parse_request(endpoint, {**body, **extra}).pin_reason == reason


def test_a_plain_request_moves_and_unknown_fields_pass_through() -> None:
    body = {
        "model": "m", "prompt": [1, 2, 3], "max_tokens": 9, "min_tokens": 2, "stop": ["x", ""],
        "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "temperature": 0.7, "my_engine_knob": {"a": 1}, "n": 1, "response_format": None,
    }  # fmt: skip
    req = parse_request(C, body)
    assert req.pin_reason is None and req.prompt_ids == (1, 2, 3)
    assert (req.max_tokens, req.min_tokens, req.stop) == (9, 2, ("x",))
    assert req.include_usage and req.continuous_usage and req.stream
    assert req.passthrough == {
        "temperature": 0.7,
        "my_engine_knob": {"a": 1},
        "response_format": None,
    }
    assert body["stop"] == ["x", ""]  # the client's body is left as it was


def test_chat_budget_and_template_fields() -> None:
    body = {"messages": MSG, "max_completion_tokens": 5, "max_tokens": 50,
            "chat_template_kwargs": {"enable_thinking": False}, "top_k": 3}  # fmt: skip
    req = parse_request(CHAT, body)
    assert req.max_tokens == 5 and req.passthrough == {"top_k": 3}
    tok = tokenize_body(req, "m")
    assert tok == {"model": "m", "messages": MSG, "add_generation_prompt": True,
                   "chat_template_kwargs": {"enable_thinking": False}}  # fmt: skip
    assert tokenize_body(parse_request(C, {"prompt": "hey"}), "m") == {
        "model": "m",
        "prompt": "hey",
    }


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ([0, 1, 50_000], True),
        ([], True),  # a list of no ids; parse_request refuses it as an empty prompt
        ([1, True], False),  # JSON true is not a token id
        ([1, 2.0], False),
        ([1, "2"], False),
        ([[1, 2]], False),  # a batch of one prompt of ids (parse_request unwraps it)
        ([1, None], False),
        ("12", False),
        ((1, 2), False),  # JSON has no tuples: only a list is a prompt of ids
    ],
)
def test_token_ids_are_exactly_a_list_of_ints(value: Any, ids: bool) -> None:
    assert is_token_ids(value) is ids
    if ids and value:
        assert parse_request(C, {"prompt": value}).prompt_ids == tuple(value)
    elif not ids and isinstance(value, list) and not isinstance(value[0], list):
        with pytest.raises(ValidationError):
            parse_request(C, {"prompt": value})
