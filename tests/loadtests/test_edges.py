"""The front-door edge probes: every edge holds on our server, and a probe can fail."""

from __future__ import annotations

from loadtests.edges import PROBES, kserve_error_body, markdown, run_all, run_probe


async def test_every_edge_holds_on_our_server() -> None:
    results = await run_all(["h1server"])
    assert {name: r["h1server"] for name, r in results.items()} == dict.fromkeys(PROBES, True)
    assert markdown(results).splitlines()[-1] == f"| **held** | **{len(PROBES)} of " \
        f"{len(PROBES)}** |"


async def test_a_probe_tells_a_server_that_lacks_the_edge() -> None:
    # uvicorn answers invalid HTTP with a plain-text body.
    assert await run_probe("uvicorn", kserve_error_body) is False
