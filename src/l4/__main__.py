"""`python -m l4` is the `l4` command."""

from l4.cli import main

raise SystemExit(main())
