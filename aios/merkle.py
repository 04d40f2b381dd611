"""The Merkle tree over the decision log (RFC 9162 §2.1, as Certificate Transparency
builds it). Pure functions, no I/O.

Leaf i is record i+1's chain hash. A signed checkpoint names a tree size and root; an
inclusion proof shows one record is leaf i of that tree with log2(size) hashes, so an
auditor holding the public key checks a record without the rest of the log, and a log
rewritten from any record on (chain and HEAD recomputed) no longer has the signed root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two below ``n`` (n > 1): where the tree splits."""
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The roots of the perfect subtrees of the leaves so far, largest first: appending
    costs O(1) amortised and the root O(log n), with O(log n) memory."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (leaves under it, its hash)

    def append(self, data: bytes) -> None:
        node = (1, leaf_hash(data))
        while self._stack and self._stack[-1][0] == node[0]:
            count, left = self._stack.pop()
            node = (count * 2, node_hash(left, node[1]))
        self._stack.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        root = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            root = node_hash(left, root)
        return root


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The root over ``leaves`` (their leaf hashes)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree over ``leaves`` (leaf hashes)."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)}")
    path: list[bytes] = []
    lo, hi = 0, len(leaves)
    # Walk down from the root, keeping the sibling subtree's root at each level.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            path.append(root_of(leaves[lo + k:hi]))
            hi = lo + k
        else:
            path.append(root_of(leaves[lo:lo + k]))
            lo += k
    path.reverse()
    return path


def root_from_proof(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` proves leaf ``index`` (its leaf hash) is in, for a tree of
    ``size``; None if the path cannot belong to such a tree (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
