"""Running a service's event loop for the `aios` commands that serve."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

import uvloop

logger = logging.getLogger("aios")


def run_async(main: Coroutine[Any, Any, None]) -> int:
    """Run a service on uvloop (asyncio's default loop costs more per call); the exit
    status. An OS error at start (a port in use, a directory it cannot write) is one log
    line and status 1, not a traceback."""
    try:
        uvloop.run(main)
    except OSError as exc:
        logger.error("cannot run: %s", exc)
        return 1
    return 0
