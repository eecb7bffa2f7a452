"""A request's journey through the instances: routing, relaying, moving, failing over.

Every movable request goes upstream as a streaming completion over token ids with
`return_token_ids`, so the gateway always holds prompt ids + generated ids. A move (cascade,
balance, drain, ordered by the policy through `LiveCluster.migrate`) or a failure closes the
source stream (the engine aborts the request and frees its KV) and sends prompt + generated ids
to the destination with `max_tokens` / `min_tokens` reduced by what was generated: token replay,
the move the simulator's `replay` mechanism models. The client sees one stream throughout.

Guarantees:

* every token the client receives was generated once and is counted once; a cut never splits a
  character (a move waits while the last token ended mid-character);
* a failure (refused connection, timeout, 5xx, a stream cut without a finish) continues the
  request on another instance through the same replay path, at most `migration_limit` times;
  the client gets an error only when no instance can serve it (`UnavailableError`);
* the first upstream answer decides the HTTP status: a 4xx reaches the client as it is
  (`BackendRejectedError`) and nothing has been sent yet; after it, errors end the stream;
* the request leaves the book exactly once (finished, failed or abandoned by its client), and its
  upstream stream is closed on every path (`finally`).

Pinned requests (`l4.gateway.protocol`) go to their instance with the client's own body and their
answer is relayed byte for byte; they still occupy the book (tokens counted per event) and may
only be retried elsewhere before anything reached the client.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from l4.errors import BackendError, BackendRejectedError, UnavailableError
from l4.gateway.book import LiveCluster, LiveRequest
from l4.gateway.health import HealthBook
from l4.gateway.metrics import GatewayMetrics
from l4.gateway.protocol import ClientRequest
from l4.gateway.render import Piece
from l4.gateway.stops import StopHit, StopStrings
from l4.gateway.upstream import Backend, UpstreamStream
from l4.instance.sequence import SeqState, Sequence
from l4.policies.base import AdmissionObserver, Policy
from l4.request import RequestSpec

log = logging.getLogger("l4.gateway")
Json = dict[str, Any]


class Opened:
    """Yielded once, first: the first engine accepted the request (the status is 200 now)."""


OPENED = Opened()


@dataclass(slots=True)
class _Hop:
    started: bool = False  # the current instance streamed its first token


@dataclass(slots=True)
class Trip:
    """What the access log and the metrics need about one request's journey."""

    backends: list[str] = field(default_factory=list)
    hops: int = 0
    failures: int = 0
    replayed_tokens: int = 0
    last_token_s: float | None = None
    handoff_from_s: float | None = None  # last token before the move in flight


class Relay:
    """What every journey borrows: the book, the backends, the policy, the clock."""

    def __init__(
        self,
        *,
        cluster: LiveCluster,
        backends: list[Backend],
        policy: Policy,
        model: str,
        max_model_len: int,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
        migration_limit: int,
        failures_to_trip: int = 3,
    ) -> None:
        self.cluster = cluster
        self.backends = backends
        self.policy = policy
        self.model = model
        self.max_model_len = max_model_len
        self.metrics = metrics
        self.clock = clock
        self.migration_limit = migration_limit
        self._observer = policy if isinstance(policy, AdmissionObserver) else None
        self._ids = itertools.count(1)
        self.migration_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.health = HealthBook(
            cluster,
            metrics,
            [b.url for b in backends],
            failures_to_trip=failures_to_trip,
            on_out=self._evacuate,
        )

    # ---- placement ----------------------------------------------------------------------------
    def admit(self, req: ClientRequest, prompt_ids: list[int], length_tokens: int) -> LiveRequest:
        """A new request: the policy routes it, the book records it."""
        now = self.clock()
        budget = req.max_tokens or max(1, self.max_model_len - length_tokens)
        spec = RequestSpec(
            request_id=next(self._ids),
            arrival_s=now,
            input_tokens=length_tokens,
            output_tokens=budget,  # unknown to policies (they must not read it)
        )
        live = LiveRequest(Sequence(spec), prompt_ids, pinned=req.pin_reason is not None)
        dst = self._choose(spec, now, exclude=None)
        self.cluster.admit(live, dst)
        if self._observer is not None:
            self._observer.admitted(live.seq, dst, now)
        return live

    def _choose(self, spec: RequestSpec, now: float, *, exclude: int | None) -> int:
        """The policy's choice; if it picked an instance out of service, the healthy one with the
        fewest requests in flight (the policy sees health only through load)."""
        healthy = [i for i in self.cluster.healthy_ids() if i != exclude]
        if not healthy:
            raise UnavailableError("no healthy backend can take the request")
        dst = self.policy.route(spec, self.cluster, now)
        if dst in healthy:
            return dst
        return min(healthy, key=lambda i: (self.cluster.instances[i].in_flight, i))

    def _evacuate(self, instance_id: int) -> None:
        """An instance left service: order its movable requests elsewhere; streams of pinned
        ones are cut (they fail over only if nothing reached their client yet)."""
        for live in self.cluster.on_instance(instance_id):
            if live.pinned or live.move is not None:
                if live.interrupt is not None:
                    live.interrupt()
                continue
            now = self.clock()
            try:
                dst = self._choose(self._respec(live, now), now, exclude=instance_id)
            except UnavailableError:
                if live.interrupt is not None:
                    live.interrupt()
                continue
            self.cluster.migrate(live.seq, instance_id, dst, "failure")

    def _respec(self, live: LiveRequest, now: float) -> RequestSpec:
        spec = live.seq.spec
        return RequestSpec(
            request_id=spec.request_id,
            arrival_s=now,
            input_tokens=live.length_tokens,
            output_tokens=spec.output_tokens,
        )

    def _move(self, live: LiveRequest, dst: int, reason: str, trip: Trip) -> None:
        src = live.seq.instances[-1]
        self.cluster.detach(live)
        self.cluster.admit(live, dst)
        live.hold_cut = False
        live.seq.migrations += 1
        tokens = len(live.prompt_ids) + len(live.generated_ids)
        trip.replayed_tokens += tokens
        trip.hops += 1
        trip.handoff_from_s = trip.last_token_s
        self.metrics.migrations.labels(reason, "ok").inc()
        self.metrics.replayed_tokens.inc(tokens)
        self.migration_log.append(
            {
                "request_id": live.request_id,
                "reason": reason,
                "src": src,
                "dst": dst,
                "length_tokens": tokens,
                "at_s": round(self.clock(), 4),
            }
        )

    def _fail_over(self, live: LiveRequest, exc: BackendError, trip: Trip) -> None:
        src = live.seq.instances[-1]
        trip.failures += 1
        self.health.failed(src, exc)
        log.info("request %d: %s; failing over", live.request_id, exc)
        if trip.failures > self.migration_limit:
            self.metrics.migrations.labels("failure", "failed").inc()
            raise UnavailableError(f"gave up after {trip.failures} failed engines ({exc})")
        now = self.clock()
        dst = self._choose(self._respec(live, now), now, exclude=src)
        self._move(live, dst, "failure", trip)

    def _upstream_body(self, live: LiveRequest, req: ClientRequest) -> bytes:
        g = len(live.generated_ids)
        body: Json = dict(req.passthrough)
        body["model"] = self.model
        body["prompt"] = live.prompt_ids + live.generated_ids if g else live.prompt_ids
        body["stream"] = True
        body["return_token_ids"] = True
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens - g
        if req.min_tokens > g:
            body["min_tokens"] = req.min_tokens - g
        return orjson.dumps(body)

    def finish(self, live: LiveRequest) -> None:
        if live.seq.state is not SeqState.FINISHED:
            self.cluster.finish(live, self.clock())

    # ---- the journey of a movable request -----------------------------------------------------
    async def journey(
        self, live: LiveRequest, req: ClientRequest, trip: Trip
    ) -> AsyncGenerator[Opened | Piece, None]:
        stops = StopStrings(req.stop, min_tokens=req.min_tokens, include=req.include_stop)
        opened = False
        try:
            while True:
                inst = live.seq.instances[-1]
                backend = self.backends[inst]
                trip.backends.append(backend.url)
                headers = {"x-request-id": f"l4-{live.request_id}-{trip.hops}"}
                try:
                    stream = await backend.open_stream(
                        "/v1/completions", self._upstream_body(live, req), headers
                    )
                except BackendRejectedError:
                    if opened:  # a replay refused (e.g. a smaller context there): give up
                        raise UnavailableError(
                            "the destination refused the replayed request"
                        ) from None
                    raise
                except BackendError as exc:
                    self._fail_over(live, exc, trip)
                    continue
                if not opened:
                    opened = True
                    yield OPENED
                live.interrupt = stream.close
                hop = _Hop()
                try:
                    # Ordered while in transit: move on at once (a cut is safe between hops).
                    cut = live.move is not None and not live.hold_cut
                    while not cut and (payloads := await stream.next_payloads()):
                        for payload in payloads:
                            piece = self._on_event(live, req, stream, payload, stops, trip, hop)
                            if piece is not None:
                                yield piece
                                if piece.finish_reason is not None:
                                    if not isinstance(piece.stop_reason, str):
                                        await stream.release()  # else: our own stop string
                                    return
                            # Cut between two tokens; the rest of this read is regenerated there.
                            cut = live.move is not None and not live.hold_cut
                            if cut:
                                break
                except BackendError as exc:
                    if live.move is None:
                        self._fail_over(live, exc, trip)
                        continue
                finally:
                    live.interrupt = None
                    stream.close()
                if live.move is None:  # the stream ended without a finish and not by our cut
                    ended = BackendError(
                        backend.url, "the stream ended without a finish reason", kind="gone"
                    )
                    self._fail_over(live, ended, trip)
                    continue
                self.health.succeeded(inst)
                self._move(live, live.move.dst, live.move.reason, trip)
        finally:
            self.finish(live)

    def _on_event(
        self,
        live: LiveRequest,
        req: ClientRequest,
        stream: UpstreamStream,
        payload: bytes,
        stops: StopStrings,
        trip: Trip,
        hop: _Hop,
    ) -> Piece | None:
        """One upstream event: the book updated, and what the client gets of it (if anything).

        Synchronous and called once per token: the relay's hot path, kept free of generator
        layers (each one a token passes through costs a resumption)."""
        try:
            choices = orjson.loads(payload).get("choices")
        except (orjson.JSONDecodeError, AttributeError):
            raise BackendError(stream.backend, "a stream event is not a JSON object") from None
        if not choices:
            return None
        choice = choices[0]
        ids = choice.get("token_ids")
        text = choice.get("text") or ""
        finish = choice.get("finish_reason")
        if ids is None:  # an engine that does not return token ids: cannot replay from here
            live.pinned = True
            ids = [0] if text else []
        generated = live.generated_ids
        if ids:
            now = self.clock()
            if not hop.started:
                hop.started = True
                if live.seq.state is not SeqState.DECODE:
                    self.cluster.started(live, now)
                if trip.handoff_from_s is not None:
                    self.metrics.handoff_pause.observe(now - trip.handoff_from_s)
                    trip.handoff_from_s = None
            generated.extend(ids)
            live.seq.generated_tokens = len(generated)
            trip.last_token_s = now
            live.hold_cut = not text
        if finish == "abort":
            raise BackendError(stream.backend, "the engine aborted it")
        n = len(generated)
        out = stops.feed(text, n)
        if isinstance(out, StopHit):
            return Piece(out.text, ids, n, "stop", out.stop)
        if finish is not None:
            return Piece(out + stops.flush(), ids, n, finish, choice.get("stop_reason"))
        if out or (ids and req.return_token_ids):
            return Piece(out, ids, n)
        return None

    # ---- pinned requests ----------------------------------------------------------------------
    async def passthrough(
        self, live: LiveRequest, req: ClientRequest, trip: Trip
    ) -> AsyncGenerator[Opened | bytes, None]:
        """The client's own body to the routed engine; its answer relayed event by event."""
        body = dict(req.body)
        body["model"] = self.model
        payload = orjson.dumps(body)
        opened = False
        sent = False
        try:
            while True:
                backend = self.backends[live.seq.instances[-1]]
                trip.backends.append(backend.url)
                try:
                    stream = await backend.open_stream(req.endpoint.value, payload)
                except BackendError as exc:
                    self._fail_over(live, exc, trip)
                    continue
                live.interrupt = stream.close
                if not opened:
                    opened = True
                    yield OPENED
                try:
                    if not req.stream:
                        yield await stream.read_body()
                        return
                    async for data in stream.payloads():
                        if data.startswith(b"{") and b'"choices":[{' in data:
                            self._count_event(live)
                        sent = True
                        yield b"data: " + data + b"\n\n"
                    if stream.done:
                        yield b"data: [DONE]\n\n"
                        return
                    raise BackendError(backend.url, "the stream ended without [DONE]")
                except BackendError as exc:
                    if sent:
                        raise UnavailableError(f"the engine failed mid-stream ({exc})") from None
                    self._fail_over(live, exc, trip)
                finally:
                    live.interrupt = None
                    stream.close()
        finally:
            self.finish(live)

    def _count_event(self, live: LiveRequest) -> None:
        # One streamed event per token and choice in vLLM; an estimate for the book only.
        if live.seq.state is not SeqState.DECODE:
            self.cluster.started(live, self.clock())
        live.seq.generated_tokens += 1
