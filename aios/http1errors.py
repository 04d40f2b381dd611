"""The errors of the lean HTTP/1.1 client (`aios.http1`): plain `OSError` subclasses,
which `aios.upstream` translates. Apart from the client so that mypyc can compile it (it
does not compile a class that inherits a builtin other than `Exception`)."""

from __future__ import annotations


class ConnectFailed(OSError):
    """No connection could be opened: nothing was sent."""


class ConnectionClosed(OSError):
    """The connection closed before a whole response arrived."""


class BadResponse(OSError):
    """The next hop's response is not valid HTTP/1.1."""
