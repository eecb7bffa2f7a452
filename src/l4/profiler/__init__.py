"""GPU profiler of the attention heterogeneity penalty (alpha): ``l4 profile-attention``.

``grid`` (pure) says what to time, ``kernels`` and ``measure`` (torch, imported only when a
profile runs) time it, ``calibrate`` turns a skew CSV into a profile's alpha table, ``cli`` is
the edge. The CSV format and the alpha fit live in ``l4.costmodel.alpha_fit``.
"""
