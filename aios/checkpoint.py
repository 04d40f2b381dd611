"""Signed checkpoints of the decision log, and the witness that keeps them.

Every so many records or seconds the sidecar signs (Ed25519) a tree head: the Merkle
root (`aios.merkle`) over every record so far, with the tree size and the last
record's sequence and chain hash. The signature covers a fixed text, so any Ed25519
tool checks it. Checkpoints go to a witness outside the log folder (a directory of its
own by default): whoever can rewrite the log folder cannot move a signed root without
the private key, which never lives there either.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "aios-checkpoint/v1"


class CheckpointError(ValueError):
    """A checkpoint or key that cannot be used; the message says which and why."""


def key_id(public: Ed25519PublicKey) -> str:
    """A short name for a public key: the first bytes of the SHA-256 of its raw form."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head."""

    log: str  # which log: the sidecar's name for its decision log
    size: int  # records (leaves) covered
    root: str  # hex Merkle root over them
    last_sequence: int
    last_hash: str  # hex chain hash of record `last_sequence`
    time_unix_nanos: int
    key_id: str
    signature: str = ""  # base64 Ed25519 over `signed_text()`

    def signed_text(self) -> bytes:
        return (f"{FORMAT}\n{self.log}\n{self.size}\n{self.root}\n{self.last_sequence}\n"
                f"{self.last_hash}\n{self.time_unix_nanos}\n{self.key_id}\n").encode()

    def signed(self, key: Ed25519PrivateKey) -> Checkpoint:
        text = self.signed_text()
        return Checkpoint(**{**asdict(self),
                             "signature": base64.b64encode(key.sign(text)).decode()})

    def check(self, public: Ed25519PublicKey) -> None:
        """CheckpointError unless ``public`` signed this checkpoint."""
        if self.key_id != key_id(public):
            raise CheckpointError(f"checkpoint of size {self.size} is signed by key "
                                  f"{self.key_id}, not by {key_id(public)}")
        try:
            public.verify(base64.b64decode(self.signature, validate=True), self.signed_text())
        except (InvalidSignature, ValueError) as exc:
            raise CheckpointError(f"checkpoint of size {self.size}: the signature does not "
                                  "verify (forged or altered)") from exc

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: Any) -> Checkpoint:
        if not isinstance(doc, dict):
            raise CheckpointError("a checkpoint must be a JSON object")
        try:
            return Checkpoint(
                log=str(doc["log"]), size=int(doc["size"]), root=str(doc["root"]),
                last_sequence=int(doc["last_sequence"]), last_hash=str(doc["last_hash"]),
                time_unix_nanos=int(doc["time_unix_nanos"]), key_id=str(doc["key_id"]),
                signature=str(doc["signature"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"not a checkpoint: {exc!r}") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the signing key ({exc.strerror})") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (or the public half of a private key's)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the public key ({exc.strerror})") from exc
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{path}: not an Ed25519 key")
    return key


def write_key_pair(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    """A new key pair: the private key readable by its owner only."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    public = key.public_key()
    public_path.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


@dataclass(frozen=True, slots=True)
class Durable:
    """What of a log is on disk: the tree over it and its last record."""

    size: int
    root: bytes
    sequence: int
    last: bytes


class Signer:
    """Signs checkpoints of one log and hands them to its witness (blocking: call it from
    a worker thread)."""

    def __init__(self, key: Ed25519PrivateKey, log: str, witness: Witness) -> None:
        self._key = key
        self._key_id = key_id(key.public_key())
        self._log = log
        self.witness = witness
        self.published = 0

    def publish(self, durable: Durable) -> Checkpoint:
        checkpoint = Checkpoint(self._log, durable.size, durable.root.hex(), durable.sequence,
                                durable.last.hex(), time.time_ns(), self._key_id
                                ).signed(self._key)
        self.witness.publish(checkpoint)
        self.published = durable.size
        return checkpoint


class Witness(Protocol):
    """Where checkpoints are kept, outside the log folder (`aios.witness`)."""

    def publish(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint`` (blocking: called from a worker thread)."""
        ...

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint kept, smallest tree first."""
        ...
