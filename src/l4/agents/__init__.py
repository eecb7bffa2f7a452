"""L4's runtime: one agent per instance, talking only by messages (L4.md section 6).

* ``messages``   the protocol: load and length reports, asks, bids, awards, boundary moves, plans.
* ``bus``        an in-process message bus (direct delivery plus retained last-value topics).
* ``stages``     the stage table every participant keeps: boundaries and instance membership.
* ``load``       an instance's load as agents bid it: predicted step time plus queued prefill.
* ``observer``   live length summaries of what an instance served over a window.
* ``refinement`` pure boundary rules: QoE two-stage optimum, request-count and memory balance.
* ``agent``      the instance agent: cascade hand-offs, bids, asks, reservations, drains.
* ``front``      the front door: arrivals placed by bids, spilled or overflowed; arrival measures.
* ``config``     what a deployment of L4 can be told (``L4Config``).
* ``runtime``    wires agents, bus and the front door together and drives them on a clock.
"""
