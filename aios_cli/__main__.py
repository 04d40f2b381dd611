"""`python -m aios_cli` is the `aios` command."""

from aios_cli.cli import main

raise SystemExit(main())
