"""The in-process bus delivers in order, never re-enters a handler, and can lose messages."""

from __future__ import annotations

import pytest

from l4.agents.bus import MessageBus
from l4.agents.messages import Award, Decline, LoadReport, Message
from l4.errors import InvariantError


def test_fifo_delivery_and_no_reentry() -> None:
    bus = MessageBus()
    log: list[tuple[int, int]] = []
    depth = [0]

    def handler(addr: int):  # type: ignore[no-untyped-def]
        def h(msg: Message) -> None:
            depth[0] += 1
            assert depth[0] == 1, "a handler ran inside another"
            assert isinstance(msg, Award | Decline)
            log.append((addr, msg.ask_id))
            if addr == 0 and msg.ask_id < 3:
                bus.send(1, Decline(ask_id=msg.ask_id + 10, sender=0))
            depth[0] -= 1

        return h

    bus.subscribe(0, handler(0))
    bus.subscribe(1, handler(1))
    for k in (1, 2, 3):
        bus.send(0, Award(ask_id=k, sender=1))
    bus.flush()
    assert log == [(0, 1), (0, 2), (0, 3), (1, 11), (1, 12)]
    assert bus.sent["Award"] == 3 and bus.sent["Decline"] == 2


def test_unknown_address_and_double_subscription_fail() -> None:
    bus = MessageBus()
    bus.subscribe(0, lambda m: None)
    with pytest.raises(InvariantError):
        bus.subscribe(0, lambda m: None)
    with pytest.raises(InvariantError):
        bus.send(7, Award(ask_id=1, sender=0))


def test_drop_rule_loses_messages_and_counts_them() -> None:
    got: list[Message] = []
    bus = MessageBus(drop=lambda dst, msg: isinstance(msg, Award))
    bus.subscribe(0, got.append)
    bus.send(0, Award(ask_id=1, sender=0))
    bus.send(0, Decline(ask_id=2, sender=0))
    bus.flush()
    assert [type(m).__name__ for m in got] == ["Decline"] and bus.dropped == 1


def test_retained_topic_keeps_the_latest_per_sender() -> None:
    bus = MessageBus()

    def report(sender: int, load: float, t: float) -> LoadReport:
        return LoadReport(
            sender=sender, stage=0, load_s=load, decode_s=load, prefill_s=0.0, kv_usage=0, sent_s=t
        )

    for t, load in ((0.0, 1.0), (0.2, 2.0)):
        bus.publish("stage/0", 3, report(3, load, t))
    bus.publish("stage/0", 4, report(4, 9.0, 0.2))
    retained = bus.retained("stage/0")
    assert {k: v.load_s for k, v in retained.items() if isinstance(v, LoadReport)} == {
        3: 2.0,
        4: 9.0,
    }
    bus.forget("stage/0", 4)
    assert set(bus.retained("stage/0")) == {3}


def test_errors_name_the_address_and_the_message() -> None:
    bus = MessageBus()
    bus.subscribe(0, lambda m: None)
    with pytest.raises(InvariantError, match=r"^address 0 subscribed twice$"):
        bus.subscribe(0, lambda m: None)
    with pytest.raises(InvariantError, match=r"^message Award to unknown address 7$"):
        bus.send(7, Award(ask_id=1, sender=0))


def test_the_drop_rule_sees_the_destination_and_every_loss_counts() -> None:
    seen: list[int] = []

    def lose_to_one(dst: int, msg: Message) -> bool:
        seen.append(dst)
        return dst == 1

    bus = MessageBus(drop=lose_to_one)
    got: list[Message] = []
    bus.subscribe(0, got.append)
    bus.subscribe(1, got.append)
    for dst in (0, 1, 1, 0):
        bus.send(dst, Award(ask_id=dst, sender=0))
    bus.flush()
    assert seen == [0, 1, 1, 0] and bus.dropped == 2 and len(got) == 2
    assert bus.sent["Award"] == 4  # sent counts what was sent, lost or not


def test_publishing_counts_each_message_once() -> None:
    bus = MessageBus()
    report = LoadReport(
        sender=3, stage=0, load_s=1.0, decode_s=1.0, prefill_s=0.0, kv_usage=0, sent_s=0.0
    )
    bus.publish("stage/0", 3, report)
    bus.publish("stage/0", 3, report)
    assert bus.sent == {"LoadReport": 2}


def test_forgetting_on_an_unknown_topic_or_sender_is_harmless() -> None:
    bus = MessageBus()
    bus.forget("stage/9", 1)
    bus.publish(
        "stage/0",
        3,
        LoadReport(sender=3, stage=0, load_s=1, decode_s=1, prefill_s=0, kv_usage=0, sent_s=0),
    )
    bus.forget("stage/0", 4)
    assert set(bus.retained("stage/0")) == {3}
    assert bus.retained("stage/9") == {}
