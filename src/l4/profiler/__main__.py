"""``python -m l4.profiler``: ``l4 profile-attention`` and ``l4 calibrate-alpha`` alone."""

from l4.profiler.cli import main

raise SystemExit(main())
