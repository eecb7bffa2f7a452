"""GPU profiler of the attention heterogeneity penalty (alpha): ``l4 profile-attention``.

``grid`` (pure) says what to time and where a batch's KV sits, ``uniform`` (pure) the uniform
throughput batches and their profile prediction; ``kernels`` (FlashAttention-2 varlen, the
Triton kernel of ``triton_attention``, SDPA, the float32 reference), ``measure`` (timing),
``suite`` (what a run measures, its estimate), ``run`` (parts, files, resume) and
``provenance`` import torch and are imported only when a profile runs; ``calibrate`` turns a
skew CSV into a profile's alpha table; ``cli`` is the edge (also ``python -m l4.profiler``). The
CSV format and the alpha fit live in ``l4.costmodel.alpha_fit``.
"""
