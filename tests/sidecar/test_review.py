"""The sidecar's review pieces without a stack: how a reviewed answer is marked (JSON,
binary extension, gzip; gRPC; hold), the reviewer's record, and the webhook's retries
against a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from aios.config import ReviewEvents
from aios.reviewqueue import Item, decide, new_item
from aios.upstream import GrpcReply, HttpReply
from sidecar.review import Queued, reviewed, reviewer_record
from sidecar.reviewevents import Announcer, signature
from tests.webhook import WebhookReceiver

ANSWER = {"model_name": "claims_risk", "model_version": "2",
          "outputs": [{"name": "risk_score", "datatype": "FP32", "shape": [1, 1],
                       "data": [0.5]}]}


def item(**changes: Any) -> Item:
    base = new_item(id="R1", decision_id="D1", model="claims_risk", version="2",
                    gate="unsure", priority=0, sla_s=60, now_ns=1, source="decisions",
                    tenant="acme", business_key="CLM-1", inputs={},
                    outputs={"risk_score": [0.5]})
    return base if not changes else decide(base, "ann", 5, **changes)


MARKS = {"x-aios-review": "pending", "x-aios-review-id": "R1"}
PARAMS = {"aios_review": "pending", "aios_review_id": "R1"}


def test_a_json_answer_is_marked_in_headers_and_parameters() -> None:
    out = reviewed(HttpReply(200, {"content-type": "application/json"},
                             orjson.dumps(ANSWER)), Queued(item(), hold=False))
    assert isinstance(out, HttpReply)
    assert out.status == 200 and out.headers == {"content-type": "application/json", **MARKS}
    assert orjson.loads(out.body) == {**ANSWER, "parameters": PARAMS}


def test_a_gzip_answer_is_marked_and_stays_gzip() -> None:
    out = reviewed(HttpReply(200, {"content-type": "application/json",
                                   "content-encoding": "gzip"},
                             gzip.compress(orjson.dumps(ANSWER))), Queued(item(), False))
    assert isinstance(out, HttpReply)
    assert orjson.loads(gzip.decompress(out.body))["parameters"] == PARAMS


def test_a_binary_answer_gets_its_header_length_set_again() -> None:
    head = orjson.dumps({**ANSWER, "outputs": [{"name": "risk_score", "datatype": "FP32",
                                                "shape": [1, 1],
                                                "parameters": {"binary_data_size": 4}}]})
    raw = np.asarray([0.5], dtype="<f4").tobytes()
    out = reviewed(HttpReply(200, {"content-type": "application/octet-stream",
                                   "inference-header-content-length": str(len(head))},
                             head + raw), Queued(item(), False))
    assert isinstance(out, HttpReply)
    length = int(out.headers["inference-header-content-length"])
    assert orjson.loads(out.body[:length])["parameters"] == PARAMS
    assert out.body[length:] == raw


def test_hold_mode_answers_202_without_the_score() -> None:
    out = reviewed(HttpReply(200, {"content-type": "application/json"},
                             orjson.dumps(ANSWER)), Queued(item(), hold=True))
    assert isinstance(out, HttpReply) and out.status == 202
    assert orjson.loads(out.body) == {"model_name": "claims_risk", "model_version": "2",
                                      "parameters": PARAMS}


@pytest.mark.parametrize("hold", [False, True])
def test_grpc_answers_carry_metadata_and_parameters(hold: bool) -> None:
    response = service_pb2.ModelInferResponse(model_name="claims_risk")
    response.outputs.add(name="risk_score", datatype="FP32", shape=[1, 1])
    response.raw_output_contents.append(np.asarray([0.5], dtype="<f4").tobytes())
    out = reviewed(GrpcReply(response.SerializeToString(), (("x-request-id", "q"),)),
                   Queued(item(), hold))
    assert isinstance(out, GrpcReply)
    assert dict(out.trailing) == {"x-request-id": "q", **MARKS}
    got = service_pb2.ModelInferResponse.FromString(out.payload)
    assert got.parameters["aios_review_id"].string_param == "R1"
    assert len(got.raw_output_contents) == (0 if hold else 1)


def test_the_reviewers_record_links_the_models_decision() -> None:
    record = reviewer_record(item(action="override", reason="fraud",
                                  value={"risk_score": [0.9]}))
    assert (record.kind, record.decision_id, record.subject, record.outcome,
            record.review_id) == ("review", "D1", "ann", "override", "R1")
    assert json.loads(record.human_review.model_json) == {"risk_score": [0.5]}
    assert json.loads(record.human_review.final_json) == {"risk_score": [0.9]}


@pytest.fixture
def secret(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "secret"
    path.write_bytes(b"s" * 32)
    yield path


def announce(url: str, secret: Path, attempts: int = 3) -> CollectorRegistry:
    registry = CollectorRegistry()
    settings = ReviewEvents(webhook_url=url, webhook_secret_file=secret,
                            webhook_attempts=attempts, webhook_backoff_s=0.01)

    async def run() -> None:
        async with Announcer(settings, registry) as announcer:
            await announcer.announce(item(action="approve", reason=""))

    asyncio.run(run())
    return registry


@pytest.mark.parametrize(("statuses", "posts", "retries", "failures"), [
    ([200], 1, 0, 0),
    ([503, 502, 200], 3, 2, 0),
    ([500, 500, 500], 3, 2, 1),   # given up after the attempts
    ([400], 1, 0, 1),             # the receiver refused it: not repeated
])
def test_the_webhook_is_signed_and_retried_on_5xx_only(
        secret: Path, statuses: list[int], posts: int, retries: int, failures: int) -> None:
    receiver = WebhookReceiver(lambda event, attempt: statuses[attempt - 1])
    try:
        registry = announce(receiver.url, secret)
    finally:
        receiver.close()
    assert len(receiver.deliveries) == posts
    body, signed = receiver.deliveries[-1].body, receiver.deliveries[-1].signature
    assert hmac.compare_digest(signed, "sha256=" + hmac.new(b"s" * 32, body,
                                                            hashlib.sha256).hexdigest())
    assert signed == signature(b"s" * 32, body)
    assert json.loads(body)["review_id"] == "R1"
    assert registry.get_sample_value("aios_review_webhook_retries_total") == retries
    assert registry.get_sample_value("aios_review_webhook_failures_total") == failures


def test_an_unreachable_webhook_is_given_up_and_counted(secret: Path) -> None:
    registry = announce("http://127.0.0.1:1/hook", secret, attempts=2)
    assert registry.get_sample_value("aios_review_webhook_failures_total") == 1


def test_a_short_webhook_secret_is_refused(tmp_path: Path) -> None:
    from aios.config import ConfigError

    (tmp_path / "s").write_bytes(b"short")
    with pytest.raises(ConfigError, match="at least 16 are needed"):
        Announcer(ReviewEvents(webhook_url="http://x", webhook_secret_file=tmp_path / "s"),
                  CollectorRegistry())
