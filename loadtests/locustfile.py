"""Locust scenarios against the gateway: realistic claims, several tenants, both protocols.

Select a scenario by tag (``--tags steady`` …):
- ``steady``: REST (JSON and binary tensors) and gRPC users scoring batches of 1-64 claims
  for several tenants;
- ``canary``: an ops user moves the canary weight during the run through the admin API;
- ``noisy``: one tenant hammers its quota (429s are expected for it and counted as
  such), while the others keep their latency;
- ``shadow``: turns on a 10% shadow to version 1 at the start.

Every user but the noisy tenant paces itself within its tenant's quota (`loadtests.pacing`,
at 80% of the rate and burst: a tenant paying per batch row pays for its batch), so a
scenario that is not about quotas is not failed by them. The operator retries a change
refused for a stale revision (409) with the fresh one, counting the retries. The run ends
with a one-screen summary: per request kind, req/s, p50/p95/p99 and errors by kind, then
the HTML report's path.

Settings come from the environment: ``AIOS_CONFIG`` (the stack file whose secret signs
the tokens), ``AIOS_GRPC`` (gateway gRPC address), ``AIOS_LOADTEST_TENANTS``.
"""

from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path
from typing import Any

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
from locust import HttpUser, User, between, events, tag, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402

from aios.config import load_config  # noqa: E402
from aios_cli.claims import synthesize_claims  # noqa: E402
from aios_cli.tokens import mint_token  # noqa: E402
from loadtests.pacing import Pacer  # noqa: E402

CONFIG = load_config(Path(os.environ.get("AIOS_CONFIG", "deploy/local/stack.yaml")))
GRPC_ADDRESS = os.environ.get(
    "AIOS_GRPC", f"{CONFIG.gateway.server.host}:{CONFIG.gateway.server.grpc_port}")
TENANTS = os.environ.get("AIOS_LOADTEST_TENANTS", "acme,globex,initech").split(",")
NOISY_TENANT = os.environ.get("AIOS_LOADTEST_NOISY", "noisy")
MODEL = "claims_risk"
CLAIMS, _ = synthesize_claims(20_000, seed=2026)
# One pacer per tenant for every user of this process (gevent: no locks needed).
PACERS = {t: Pacer.for_quota(CONFIG.gateway.quota.for_tenant(t)) for t in TENANTS}
# How many operator changes met a stale revision and were sent again, and how many 429s
# the noisy tenant met (expected: that scenario is about quotas).
RETRIED: collections.Counter[str] = collections.Counter()
EXPECTED_429: collections.Counter[str] = collections.Counter()
MAX_RETRIES = 5


def paced(tenant: str, rows: int) -> None:
    """Sleep until a request of ``rows`` rows is within ``tenant``'s quota."""
    delay = PACERS[tenant].wait(time.monotonic(), rows)
    if delay:
        time.sleep(delay)  # gevent's: locust patches the standard library


def token(tenant: str, scope: str = f"infer:{MODEL}") -> str:
    """A token for ``tenant`` signed with the stack's development secret."""
    return mint_token(CONFIG.gateway.auth, f"locust-{tenant}", tenant, scope, 3600)


def batch() -> NDArray[Any]:
    """A realistic batch: 1-64 claims drawn from the synthetic book."""
    size = random.choice((1, 1, 1, 2, 4, 8, 16, 32, 64))
    start = random.randrange(len(CLAIMS) - size)
    return CLAIMS[start:start + size]


def json_body(x: NDArray[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}


def binary_body(x: NDArray[Any]) -> tuple[bytes, int]:
    import json

    header = json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                     "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "risk_score",
                                      "parameters": {"binary_data": True}}]}).encode()
    return header + x.astype("<f4").tobytes(), len(header)


class RestUser(HttpUser):
    """Scores claims over REST, JSON or binary tensors, as one of several tenants."""

    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        self.tenant = random.choice(TENANTS)
        self.auth = {"authorization": f"Bearer {token(self.tenant)}"}

    @tag("steady", "canary", "shadow", "noisy")
    @task(3)
    def score_json(self) -> None:
        x = batch()
        paced(self.tenant, len(x))
        self.client.post(f"/v2/models/{MODEL}/infer", json=json_body(x),
                         headers={**self.auth, "x-claim-id": str(random.randrange(10**6))},
                         name="rest json")

    @tag("steady", "canary", "shadow", "noisy")
    @task(2)
    def score_binary(self) -> None:
        x = batch()
        paced(self.tenant, len(x))
        body, header_len = binary_body(x)
        self.client.post(f"/v2/models/{MODEL}/infer", data=body, name="rest binary",
                         headers={**self.auth, "content-type": "application/octet-stream",
                                  "inference-header-content-length": str(header_len)})


class GrpcUser(User):
    """Scores claims over gRPC (KServe's ModelInfer with raw tensors), reporting to
    Locust's statistics. A plain grpc channel, closed once: tritonclient's client closes
    again from __del__, which can hang a gevent process at exit."""

    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(GRPC_ADDRESS)
        self.infer = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        self.tenant = random.choice(TENANTS)
        self.metadata = (("authorization", f"Bearer {token(self.tenant)}"),)

    def on_stop(self) -> None:
        self.channel.close()

    @tag("steady", "canary", "shadow", "noisy")
    @task
    def score(self) -> None:
        x = batch()
        paced(self.tenant, len(x))
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        tensor = request.inputs.add(name="features", datatype="FP32")
        tensor.shape.extend(x.shape)
        request.raw_input_contents.append(x.astype("<f4").tobytes())
        start = time.perf_counter()
        exception = None
        try:
            self.infer(request.SerializeToString(), metadata=self.metadata, timeout=10)
        except grpc.RpcError as exc:  # reported to Locust, which counts it as a failure
            exception = exc
        events.request.fire(  # type: ignore[no-untyped-call]
            request_type="grpc", name="grpc infer",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=x.nbytes, exception=exception, context={})


class NoisyTenant(HttpUser):
    """One tenant saturating its quota: its 429s are expected, and marked as such."""

    wait_time = between(0.0, 0.002)

    def on_start(self) -> None:
        self.auth = {"authorization": f"Bearer {token(NOISY_TENANT)}"}

    @tag("noisy")
    @task
    def hammer(self) -> None:
        with self.client.post(f"/v2/models/{MODEL}/infer", json=json_body(batch()),
                              headers=self.auth, name="noisy tenant",
                              catch_response=True) as resp:
            if resp.status_code in (200, 429):
                resp.success()
            if resp.status_code == 429:
                EXPECTED_429["noisy tenant"] += 1


class Ops(HttpUser):
    """An operator: moves the canary weight step by step (``canary``), or turns on a
    10% shadow of version 1 and watches the table (``shadow``), through the admin API."""

    wait_time = between(2, 3)

    def on_start(self) -> None:
        self.auth = {"authorization": f"Bearer {token('ops', 'routes:read routes:write')}"}
        self.weight = 0
        self.shadowing = False

    def _table(self) -> dict[str, Any]:
        table: dict[str, Any] = self.client.get(f"/admin/routes/{MODEL}", headers=self.auth,
                                                name="admin get").json()
        return table

    def _put(self, what: str, body: Any) -> None:
        """PUT a change built by ``body(table)`` on the current table; on a stale revision
        (another operator changed it first) read the table again and send it again."""
        for _ in range(MAX_RETRIES):
            table = self._table()
            change = body(table)
            if change is None:
                return
            with self.client.put(f"/admin/routes/{MODEL}/{what}", headers=self.auth,
                                 name=f"admin {what}", catch_response=True,
                                 json={"base_revision": table["revision"], **change,
                                       "reason": "locust"}) as resp:
                if resp.status_code != 409:
                    return
                resp.success()  # not a failure: the retry below is what an operator does
                RETRIED[what] += 1

    @tag("canary")
    @task
    def move_weight(self) -> None:
        def weights(table: dict[str, Any]) -> dict[str, Any] | None:
            names = sorted(table["targets"])
            if len(names) < 2:
                return None
            self.weight = min(self.weight + 10, 100)
            return {"weights": {names[0]: 100 - self.weight, names[1]: self.weight}}

        self._put("weights", weights)

    @tag("shadow")
    @task
    def shadow(self) -> None:
        if self.shadowing:
            self._table()
            return
        self._put("shadow", lambda table: {"shadow": {
            "backend": "local", "version": "1", "fraction": 0.1, "output": "risk_score",
            "threshold": 0.5}})
        self.shadowing = True


def summary(environment: Environment) -> str:
    """One screen: per request kind, its rate, latency percentiles and errors by kind."""
    stats = environment.stats
    lines = [f"{'request':<16} {'count':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
             f"{'p99 ms':>8}  errors"]
    errors: dict[str, list[str]] = {}
    for error in stats.errors.values():
        errors.setdefault(error.name, []).append(f"{error.occurrences} x {error.error}")
    for entry in sorted(stats.entries.values(), key=lambda e: e.name):
        lines.append(
            f"{entry.name:<16} {entry.num_requests:>8} {entry.total_rps:>8.1f} "
            f"{entry.get_response_time_percentile(0.5):>8.0f} "
            f"{entry.get_response_time_percentile(0.95):>8.0f} "
            f"{entry.get_response_time_percentile(0.99):>8.0f}  "
            f"{'; '.join(errors.get(entry.name, [])) or 'none'}")
    if EXPECTED_429:
        lines.append("refused by quota, as the scenario means them to be: " + ", ".join(
            f"{name} {n} x 429" for name, n in sorted(EXPECTED_429.items())))
    if RETRIED:
        lines.append("stale revisions retried: " + ", ".join(
            f"{what} {n}" for what, n in sorted(RETRIED.items())))
    html = getattr(environment.parsed_options, "html_file", None)
    if html:
        lines.append(f"HTML report: {html}")
    return "\n".join(lines)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def print_summary(environment: Environment, **_: Any) -> None:
    print("\n" + summary(environment), flush=True)
