"""`gateway.resp`: the pipelined Redis client against a real redis-server."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.resp import PipelinedRedis, Script
from tests.helpers import free_ports
from tests.redis_server import RedisServer
from tests.tcpproxy import DelayProxy

ECHO = Script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}")


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(
        redis_server: RedisServer) -> None:
    client = PipelinedRedis(redis_server.url, 1.0)
    prefix = f"resp:{time.time_ns()}"
    replies = await asyncio.gather(*(client.run(ECHO, [f"{prefix}:{i}"], [f"v{i}", i])
                                     for i in range(200)))
    assert replies == [[f"{prefix}:{i}".encode(), f"v{i}".encode(), 2 * i] for i in range(200)]
    # One connection carried them all.
    ids = await asyncio.gather(*(client.execute("CLIENT", "ID") for _ in range(5)))
    assert len(set(ids)) == 1
    await client.aclose()


async def test_a_script_flushed_by_redis_is_loaded_again(redis_server: RedisServer) -> None:
    client = PipelinedRedis(redis_server.url, 1.0)
    assert (await client.run(ECHO, ["k"], ["a", 1]))[2] == 2
    await client.execute("SCRIPT", "FLUSH")
    assert (await client.run(ECHO, ["k"], ["a", 2]))[2] == 4
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        await client.execute("GET")
    await client.aclose()


async def test_a_late_reply_times_out_and_the_next_call_uses_a_new_connection(
        redis_server: RedisServer) -> None:
    async with DelayProxy(redis_server.port, delay_s=0.5) as proxy:
        client = PipelinedRedis(f"redis://127.0.0.1:{proxy.port}/0", 0.1)
        with pytest.raises((TimeoutError, RedisConnectionError)):
            await client.execute("PING")
        proxy.delay_s = 0.0
        started = time.monotonic()
        assert await client.execute("PING") == b"PONG"
        assert time.monotonic() - started < 0.3, "queued behind the late reply"
        await client.aclose()


async def test_redis_down_is_a_connection_error() -> None:
    client = PipelinedRedis("redis://127.0.0.1:1/0", 0.2)
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await client.execute("PING")


async def test_a_password_in_the_url_authenticates(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        with pytest.raises(ResponseError, match="NOAUTH"):
            await PipelinedRedis(server.url, 1.0).execute("PING")
        for url in (f"redis://:s3cret@127.0.0.1:{server.port}/0",
                    f"redis://default:s3cret@127.0.0.1:{server.port}/2"):
            assert await PipelinedRedis(url, 1.0).execute("PING") == b"PONG"
    finally:
        server.stop()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aios test CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(key.public_key()).serial_number(1)
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(2)
              .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
              .sign(key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


async def test_rediss_speaks_tls_verified_against_the_given_ca(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    (port,) = free_ports(1)
    process = await asyncio.create_subprocess_exec(
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = PipelinedRedis(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", 1.0)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert await client.execute("PING") == b"PONG"
                break
            except RedisConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        # Without the CA the server's certificate is not trusted.
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await PipelinedRedis(f"rediss://127.0.0.1:{port}/0", 1.0).execute("PING")
        await client.aclose()
    finally:
        process.kill()
        await process.wait()
