"""The Merkle tree over the log: RFC 6962's test vectors, and proofs at every size."""

from __future__ import annotations

import hashlib

import pytest

from aios.merkle import (
    EMPTY_ROOT,
    Frontier,
    inclusion_proof,
    leaf_hash,
    root_from_proof,
    root_of,
)

# Certificate Transparency's reference inputs and roots (RFC 6962's test data).
INPUTS = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
          b"\x50\x51\x52\x53\x54\x55\x56\x57",
          b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"]
ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


@pytest.mark.parametrize("size", sorted(ROOTS))
def test_roots_match_rfc_6962(size: int) -> None:
    tree = Frontier()
    for data in INPUTS[:size]:
        tree.append(data)
    assert tree.root().hex() == ROOTS[size]
    assert root_of([leaf_hash(d) for d in INPUTS[:size]]).hex() == ROOTS[size]


def test_the_empty_tree() -> None:
    assert Frontier().root() == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_every_leaf_of_every_size_proves_and_nothing_else_does() -> None:
    data = [hashlib.sha256(bytes([i])).digest() for i in range(33)]
    for size in range(1, len(data) + 1):
        leaves = [leaf_hash(d) for d in data[:size]]
        root = root_of(leaves)
        for index in range(size):
            path = inclusion_proof(leaves, index)
            assert len(path) <= size.bit_length()
            assert root_from_proof(leaves[index], index, size, path) == root
            if size > 1:
                assert root_from_proof(leaf_hash(b"forged"), index, size, path) != root
                assert root_from_proof(leaves[index], (index + 1) % size, size, path) != root


@pytest.mark.parametrize(("index", "size"), [(-1, 4), (4, 4), (0, 0)])
def test_a_leaf_outside_the_tree_proves_nothing(index: int, size: int) -> None:
    assert root_from_proof(leaf_hash(b"x"), index, size, []) is None
