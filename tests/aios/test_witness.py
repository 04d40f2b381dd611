"""The three witnesses a signed log can publish to: a folder, Redis (a redis-server the
test starts) and PostgreSQL (a database of the test's own); each keeps what a writer
signs, shows a rewrite to `verify`, and an unreachable one stops the writer from
answering as if recorded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aios.auditlog import records, segments, verify, write_head
from aios.chain import GENESIS, seal
from aios.checkpoint import Checkpoint, load_public_key, write_key_pair
from aios.config import SignedLogSettings
from aios.errors import LogUnavailable
from aios.signedlog import SignedLog
from aios.witness import witness_at
from proto.decision_record_pb2 import DecisionRecord
from tests.helpers import free_ports
from tests.redis_server import RedisServer


def start(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a witness of ``kind`` is: a folder, or the URL of a server of the test's own."""
    if kind == "directory":
        return str(tmp_path / "witness")
    if kind == "redis":
        server = RedisServer(tmp_path)
        server.start()
        request.addfinalizer(server.stop)
        return server.url
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["directory", "redis", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return start(request.param, request, tmp_path)


@pytest.fixture(params=["redis", "postgresql"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A witness that several logs (sidecars) publish to."""
    return start(request.param, request, tmp_path)


def settings(tmp_path: Path, where: str, name: str = "") -> SignedLogSettings:
    key = tmp_path / "k.pem"
    if not key.exists():
        write_key_pair(key, tmp_path / "k.pub.pem")
    place = {"witness_directory": where} if where.startswith("/") else {"witness_url": where}
    return SignedLogSettings.model_validate({"directory": str(tmp_path / "log"),
                                             "signing_key_file": str(key), "name": name,
                                             **place})


async def write(config: SignedLogSettings, n: int) -> None:
    log = await SignedLog.open(config, "log")
    for i in range(n):
        await log.append(DecisionRecord(decision_id=f"d-{i}", model="m"), f"record {i}")


async def test_a_witness_keeps_every_checkpoint_and_catches_a_rewrite(
        tmp_path: Path, where: str) -> None:
    config = settings(tmp_path, where, name="sidecar-a")
    await write(config, 5)
    witness = witness_at(where, "sidecar-a")
    assert [(c.log, c.size) for c in witness.checkpoints()] == [
        ("sidecar-a", n) for n in range(1, 6)]
    public = load_public_key(tmp_path / "k.pub.pem")
    report = verify(config.directory, witness, public)
    assert report.intact and report.covered == 5, report

    recs = list(records(config.directory))  # an insider rewrites record 3 and re-chains
    for path in segments(config.directory):
        path.unlink()
    prev, data = GENESIS, b""
    for rec in recs:
        if rec.sequence == 3:
            rec.model = "other"
        data += seal(rec, rec.sequence, prev)
        prev = rec.hash
    (config.directory / "segment-0000000000000001.log").write_bytes(data)
    write_head(config.directory, 5, prev, "segment-0000000000000001.log")
    report = verify(config.directory, witness, public)
    assert report.kind == "rewritten", report
    assert verify(config.directory).intact, "the chain alone is fooled"


async def test_logs_sharing_a_witness_keep_apart_by_name(tmp_path: Path, shared: str) -> None:
    await write(settings(tmp_path / "a", shared, name="a"), 2)
    await write(settings(tmp_path / "b", shared, name="b"), 3)
    assert [c.size for c in witness_at(shared, "a").checkpoints()] == [1, 2]
    assert [c.size for c in witness_at(shared, "b").checkpoints()] == [1, 2, 3]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0",
                                 "postgresql://postgres@127.0.0.1:{port}/x"])
async def test_an_unreachable_witness_means_not_recorded(tmp_path: Path, url: str) -> None:
    [port] = free_ports(1)
    log = await SignedLog.open(settings(tmp_path, url.format(port=port)), "log")
    with pytest.raises(LogUnavailable, match=r"record 0 could not be recorded in log \(.*"
                                             r"witness"):
        await log.append(DecisionRecord(decision_id="d-0"), "record 0")


def test_a_folder_and_a_url_at_once_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="witness_url: set either witness_directory or "
                                         "witness_url"):
        SignedLogSettings(directory=tmp_path / "log", witness_directory=tmp_path / "w",
                          witness_url="redis://127.0.0.1:1/0")


def test_writers_that_make_the_table_at_once_all_land(postgres_url: str) -> None:
    """Sidecars (or a sidecar's last checkpoint and the one still in flight) meeting a
    fresh database: PostgreSQL's CREATE TABLE IF NOT EXISTS races with itself."""
    def publish(i: int) -> None:
        witness_at(postgres_url, f"log-{i}").publish(Checkpoint(
            f"log-{i}", 1, "00", 1, "00", time.time_ns(), "k", ""))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(publish, range(8)))
    assert [len(witness_at(postgres_url, f"log-{i}").checkpoints()) for i in range(8)] == \
        [1] * 8
