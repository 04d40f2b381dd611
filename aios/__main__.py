"""`python -m aios` is the `aios` command."""

from aios.cli import main

raise SystemExit(main())
