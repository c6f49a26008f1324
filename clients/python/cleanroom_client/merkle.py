"""Merkle trees over an audit log, as Certificate Transparency builds them (RFC 9162, section 2.1).

Why: a hash chain signed by the server proves that entries were not edited, but whoever holds the server's disk can
go back in time (delete the newest entries and the head that names them) and nobody can tell. A Merkle tree lets a
member or an auditor who once saw a tree head demand proof that every later head *extends* it (a consistency
proof), and that the entry a response recorded is still in the tree (an inclusion proof), each with O(log n) hashes.
A server that rewound the log cannot produce either proof, so members who remember what they saw catch it.

Hashing (RFC 9162, section 2.1.1), SHA-256:
- the hash of an empty tree is SHA-256 of the empty string;
- a leaf's hash is SHA-256(0x00 || leaf data); for the audit log the leaf data are the 32 bytes of the entry's
  `hash` (itself SHA-256 of the entry's canonical JSON, `cleanroom.audit.chain`);
- an interior node's hash is SHA-256(0x01 || left || right), the left subtree holding the largest power of two of
  leaves smaller than the whole.

The proofs and their verification are RFC 9162's algorithms (sections 2.1.3 and 2.1.4) unchanged, so any CT
library verifies them. Nothing here is secret: the module is pure and used by the server, the SDK and auditors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof that does not verify, or asks for an impossible range."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: the largest power of two strictly smaller than n (n >= 2)."""
    if n < 2:
        raise ValueError(f"no power of two below {n} splits a tree")
    return 1 << ((n - 1).bit_length() - 1)


#: The hash of the perfect subtree of 2**level leaves starting at leaf index * 2**level.
PerfectHash = Callable[[int, int], bytes]


def range_hash(perfect: PerfectHash, start: int, end: int) -> bytes:
    """MTH of leaves [start, end), where `start` is a multiple of the subtree sizes RFC 9162 splits into.

    Every range the RFC's recursion visits is such a range; perfect aligned subtrees come from `perfect`, so a
    store that keeps them answers any head or proof with O(log n) lookups.
    """
    n = end - start
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return perfect(n.bit_length() - 1, start // n)
    k = largest_power_of_two_below(n)
    return node_hash(range_hash(perfect, start, start + k), range_hash(perfect, start + k, end))


def _path(perfect: PerfectHash, m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = largest_power_of_two_below(n)
    if m < k:
        return [*_path(perfect, m, start, start + k), range_hash(perfect, start + k, end)]
    return [*_path(perfect, m - k, start + k, end), range_hash(perfect, start, start + k)]


def inclusion_proof(perfect: PerfectHash, leaf_index: int, tree_size: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1: the audit path of leaf `leaf_index` in the first `tree_size`."""
    if not 0 <= leaf_index < tree_size:
        raise ProofError(f"leaf {leaf_index} is not in a tree of {tree_size}")
    return _path(perfect, leaf_index, 0, tree_size)


def _subproof(perfect: PerfectHash, m: int, start: int, end: int, complete: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if complete else [range_hash(perfect, start, end)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return [*_subproof(perfect, m, start, start + k, complete), range_hash(perfect, start + k, end)]
    return [*_subproof(perfect, m - k, start + k, end, False), range_hash(perfect, start, start + k)]


def consistency_proof(perfect: PerfectHash, first: int, second: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 section 2.1.4.1: that the tree of `second` leaves extends that of `first`."""
    if not 0 <= first <= second:
        raise ProofError(f"a tree of {second} cannot extend one of {first}")
    if first == 0 or first == second:
        return []
    return _subproof(perfect, first, 0, second, True)


def _walk(fn: int, sn: int, path: Sequence[bytes], kind: str, mismatch: str) -> Iterator[tuple[bytes, bool]]:
    """RFC 9162's walk up from node `fn` of a tree whose last node is `sn`, shared by both verifications.

    Yields each hash of `path` with whether it stands on the left of the hash computed so far. ProofError if the
    path is longer than the tree is deep, or (with `mismatch`) if it ends before the root.
    """
    for c in path:
        if sn == 0:
            raise ProofError(f"the {kind} proof is longer than the tree is deep")
        left = bool(fn & 1) or fn == sn
        yield c, left
        if left and not fn & 1:
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(mismatch)


def verify_inclusion(leaf: bytes, leaf_index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 section 2.1.3.2: ProofError unless `leaf` (a leaf hash) is leaf `leaf_index` of the tree `root`."""
    if not 0 <= leaf_index < tree_size:
        raise ProofError(f"leaf {leaf_index} is not in a tree of {tree_size}")
    mismatch = f"leaf {leaf_index} is not in the tree of {tree_size} with this root"
    r = leaf
    for p, left in _walk(leaf_index, tree_size - 1, proof, "inclusion", mismatch):
        r = node_hash(p, r) if left else node_hash(r, p)
    if r != root:
        raise ProofError(mismatch)


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 section 2.1.4.2: ProofError unless the tree (`second`, `second_root`) extends (`first`, `first_root`).

    The empty tree is extended by every tree; a tree extends itself only with the same root and an empty proof.
    """
    if not 0 <= first <= second:
        raise ProofError(f"a tree of {second} entries cannot extend one of {first}: the log shrank")
    if first == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if first == second:
        if proof or first_root != second_root:
            raise ProofError(f"two different trees of {first} entries: the log was rewritten")
        return
    if not proof:
        raise ProofError("an empty consistency proof between different sizes")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    mismatch = f"the tree of {second} entries does not extend the one of {first}: the log was rewritten"
    fr = sr = path[0]
    for c, left in _walk(fn, sn, path[1:], "consistency", mismatch):
        if left:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
        else:
            sr = node_hash(sr, c)
    if fr != first_root or sr != second_root:
        raise ProofError(mismatch)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes held in memory (tests, small exports): the RFC's definition, directly."""
    return _mth(leaves)


def _mth(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = largest_power_of_two_below(n)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


class MerkleNodes:
    """Every perfect subtree's hash of a growing log, kept level by level: appends cost O(1) amortized.

    `levels[l][i]` is the hash of leaves [i * 2**l, (i + 1) * 2**l). With these, any tree head and any proof over
    the first n leaves needs O(log n) hashes (`range_hash`); the server keeps them for each chain, and a verifier
    reading an export builds them as it goes, so checking 100,000 entries is 200,000 SHA-256 calls.
    """

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        """Leaves appended."""
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash, and every perfect subtree it completes."""
        self.levels[0].append(leaf)
        level, node = 0, leaf
        while len(self.levels[level]) % 2 == 0:
            row = self.levels[level]
            node = node_hash(row[-2], node)
            level += 1
            if level == len(self.levels):
                self.levels.append([])
            self.levels[level].append(node)

    def perfect(self, level: int, index: int) -> bytes:
        """The `PerfectHash` of this log."""
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all by default)."""
        return range_hash(self.perfect, 0, self.size if size is None else size)
