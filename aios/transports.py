"""The libraries our hand-written transports are measured against (`make bench
--transports`): uvicorn for `aios.h1server`, aiohttp for `aios.http1`. Chosen per
service in the config (`server.http_server`, `upstream client`); the defaults are ours.
uvicorn holds 6 of the 14 edges our server holds (`python -m loadtests.edges`; the
decision and its evidence are in loadtests/README.md): they are here to be compared, not run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import aiohttp
from starlette.types import ASGIApp

from aios.config import ServerSettings
from aios.http1 import Response
from aios.http1errors import ConnectFailed


class HttpPool(Protocol):
    """Keep-alive connections to one next hop (`aios.http1.Http1Pool` or `AiohttpPool`)."""

    async def request(self, method: str, path: str, body: bytes,
                      headers: Iterable[tuple[str, str]], timeout_s: float) -> Response:
        """One request and its response within ``timeout_s``."""
        ...

    async def aclose(self) -> None:
        """Close the idle connections."""
        ...


class AiohttpPool:
    """An aiohttp session to one ``host:port``, answering as `Http1Pool` does (errors as
    `ConnectFailed`, `TimeoutError` or `OSError`)."""

    def __init__(self, address: str, connect_timeout_s: float) -> None:
        self._base = f"http://{address}"
        self._connect_timeout = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, path: str, body: bytes,
                      headers: Iterable[tuple[str, str]], timeout_s: float) -> Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding",
                                   "Content-Type"))
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=self._connect_timeout)
        try:
            async with self._session.request(method, self._base + path, data=body,
                                             headers=list(headers), timeout=timeout) as resp:
                data = await resp.read()
                return Response(resp.status, [(k.lower(), v) for k, v in resp.headers.items()],
                                data)
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise OSError(str(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class UvicornServer:
    """uvicorn serving ``app`` on the settings' host and HTTP port, started and stopped
    as `aios.h1server.H1Server` is (its own signal handling left out)."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(
            app, host=settings.host, port=settings.http_port, http="httptools", loop="none",
            interface="asgi3",
            lifespan="off", access_log=False, log_level="warning", backlog=2048,
            timeout_keep_alive=max(1, int(settings.keepalive_timeout_s))))

    async def start(self) -> None:
        """Listen."""
        config: Any = self._server.config
        config.load()
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup()

    async def shutdown(self) -> None:
        """Stop accepting and close the connections."""
        await self._server.shutdown()
