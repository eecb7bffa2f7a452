"""An in-process message bus: direct messages delivered in order, and retained topics.

Direct messages (``send``) go through one FIFO queue and are delivered by ``flush``, so a handler
that sends more messages never re-enters another handler. Topics (``publish``/``retained``) keep
the latest message per sender, as a retained MQTT topic does: readers see the freshest report of
each peer without every report being delivered to every peer.

A ``drop`` predicate lets tests lose messages on purpose (the protocol must survive it: bids
expire).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable

from l4.agents.messages import Message
from l4.errors import InvariantError

Handler = Callable[[Message], None]
DropRule = Callable[[int, Message], bool]


class MessageBus:
    def __init__(self, *, drop: DropRule | None = None) -> None:
        self._handlers: dict[int, Handler] = {}
        self._queue: deque[tuple[int, Message]] = deque()
        self._topics: dict[str, dict[int, Message]] = {}
        self._drop = drop
        self.sent: Counter[str] = Counter()
        self.dropped = 0

    def subscribe(self, address: int, handler: Handler) -> None:
        if address in self._handlers:
            raise InvariantError(f"address {address} subscribed twice")
        self._handlers[address] = handler

    def send(self, dst: int, msg: Message) -> None:
        if dst not in self._handlers:
            raise InvariantError(f"message {type(msg).__name__} to unknown address {dst}")
        self.sent[type(msg).__name__] += 1
        if self._drop is not None and self._drop(dst, msg):
            self.dropped += 1
            return
        self._queue.append((dst, msg))

    def flush(self) -> None:
        """Deliver queued messages (and those their handlers send) until none is left."""
        while self._queue:
            dst, msg = self._queue.popleft()
            self._handlers[dst](msg)

    def publish(self, topic: str, sender: int, msg: Message) -> None:
        self.sent[type(msg).__name__] += 1
        self._topics.setdefault(topic, {})[sender] = msg

    def retained(self, topic: str) -> dict[int, Message]:
        return self._topics.get(topic, {})

    def forget(self, topic: str, sender: int) -> None:
        """Drop a sender's retained message (it left the topic's group)."""
        self._topics.get(topic, {}).pop(sender, None)
