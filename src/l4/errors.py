"""The one exception tree of L4.

    L4Error
    ├── ConfigError            a bad option, profile, policy name or value given by the user
    │   ├── UnknownNameError   a name that is not in a registry (profile, policy, trace)
    │   └── ValidationError    a value out of range (negative rate, zero instances, ...)
    ├── WorkloadError          a trace that cannot be read (missing file, malformed row)
    ├── CapacityError          a request that can never fit an instance (prompt above KV capacity)
    ├── InvariantError         the simulator caught itself losing, duplicating or over-allocating
    ├── BackendError           an engine behind the gateway failed: refused the connection, timed
    │                          out, answered 5xx or cut a stream (the gateway continues elsewhere)
    ├── BackendRejectedError   an engine refused a request as the client's mistake (4xx): its
    │                          status and body go back to the client as they are
    └── UnavailableError       no healthy engine can serve a request now (the gateway answers 503)

Only the edges (the CLI, the HTTP routes) turn these into exit codes or status codes.
"""

from __future__ import annotations


class L4Error(Exception):
    """Base of every error L4 raises on purpose."""


class ConfigError(L4Error):
    """A configuration given by the user is wrong."""


class UnknownNameError(ConfigError):
    """A name is not registered; the message lists the known ones."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(sorted(self.known))}")


class ValidationError(ConfigError):
    """A value is out of its allowed range."""


class WorkloadError(L4Error):
    """A trace or workload file cannot be read or is malformed."""


class CapacityError(L4Error):
    """A request can never be served by the configured instance."""


class InvariantError(L4Error):
    """An internal invariant broke: a bug, never a user error."""


class BackendError(L4Error):
    """An engine behind the gateway failed; the request may continue on another one.

    ``kind``: "gone" (refused the connection or cut a stream: the engine is not there),
    "timeout" (no answer in time: it, or the gateway, may just be slow) or "error" (it answered
    badly: a 5xx, a broken event, a failed write on a reused connection).
    """

    def __init__(self, backend: str, message: str, *, kind: str = "error") -> None:
        self.backend = backend
        self.kind = kind
        super().__init__(f"{backend}: {message}")


class BackendRejectedError(L4Error):
    """An engine answered a 4xx: the request itself is wrong. Carries the engine's answer."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        super().__init__(f"the engine answered {status}")


class UnavailableError(L4Error):
    """No healthy engine can take the request now."""
