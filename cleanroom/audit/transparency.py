"""The audit log as a transparency log: a Merkle tree over each chain, signed tree heads, proofs and receipts.

Why: the hash chain and its signed head catch edits, but the head lives on the operator's disk with the log, so a
rollback of both (or of the whole data directory) verifies. Members and auditors therefore remember signed tree
heads (RFC 9162) and demand proof that each new one extends the last (`cleanroom_client.transparency`). This module
is the server's half: it builds each chain's tree from the entries' hashes (the leaves), signs heads with the audit
key, and answers inclusion and consistency proofs with O(log n) hashes.

Invariants: the tree is derived from the stored chain only (never a second source of truth); a chain's tree is
built the first time it is asked for and extended incrementally after (so start-up does not depend on log length);
proofs refuse sizes beyond the chain's current size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from cleanroom_client import merkle
from cleanroom_client.transparency import TreeHead

from ..errors import InvalidArgumentError
from .chain import AuditEntry
from .log import AuditLog


@dataclass(frozen=True)
class Receipt:
    """An entry, a signed tree head that contains it, and the entry's inclusion proof in that head's tree."""

    entry: AuditEntry
    head: TreeHead
    proof: tuple[bytes, ...]


class AuditTrees:
    """Each chain's Merkle tree, kept in memory and extended from the stored entries as they are appended."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._trees: dict[str, merkle.MerkleNodes] = {}
        #: One lock per chain: building one collaboration's tree (its first use in a run reads every entry) never
        #: holds up another collaboration's receipts.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def _synced(self, chain: str) -> merkle.MerkleNodes:
        """The chain's tree up to its last stored entry (rebuilt if the stored chain is shorter than the tree)."""
        with self._locks_lock:
            lock = self._locks.setdefault(chain, threading.Lock())
        with lock:
            nodes = self._trees.get(chain)
            if nodes is None or self._log.last_sequence(chain) < nodes.size:
                nodes = merkle.MerkleNodes()
                self._trees[chain] = nodes
            for data in self._log.leaves(chain, after=nodes.size):
                nodes.append(merkle.leaf_hash(data))
            return nodes

    def head(self, chain: str, size: int | None = None) -> TreeHead:
        """The signed head of the chain now (or of its first `size` entries)."""
        nodes = self._synced(chain)
        n = nodes.size if size is None else size
        if not 0 <= n <= nodes.size:
            raise InvalidArgumentError(f"the log has {nodes.size} entries, not {n}")
        unsigned = TreeHead(
            chain, n, nodes.root(n), datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        return TreeHead(chain, n, unsigned.root, unsigned.time, self._log.sign(unsigned.message()))

    def consistency(self, chain: str, first: int, second: int) -> list[bytes]:
        """RFC 9162 consistency proof between the chain's trees of `first` and `second` entries."""
        nodes = self._synced(chain)
        if not 0 <= first <= second <= nodes.size:
            raise InvalidArgumentError(
                f"first and second must satisfy 0 <= first <= second <= {nodes.size} (the log's size); "
                f"got {first} and {second}"
            )
        return merkle.consistency_proof(nodes.perfect, first, second)

    def inclusion(self, chain: str, sequence: int, tree_size: int) -> tuple[AuditEntry, list[bytes]]:
        """Entry `sequence` and its inclusion proof in the chain's tree of `tree_size` entries."""
        nodes = self._synced(chain)
        if not 1 <= sequence <= tree_size <= nodes.size:
            raise InvalidArgumentError(
                f"sequence and tree_size must satisfy 1 <= sequence <= tree_size <= {nodes.size}; "
                f"got {sequence} and {tree_size}"
            )
        entry = next(iter(self._log.entries(chain, after=sequence - 1, limit=1)))
        return entry, merkle.inclusion_proof(nodes.perfect, sequence - 1, tree_size)

    def receipts(self, entries: list[AuditEntry]) -> list[Receipt]:
        """A receipt for each entry: one signed head per chain (after all of them), and each entry's proof in it."""
        heads: dict[str, TreeHead] = {}
        out: list[Receipt] = []
        for entry in entries:
            head = heads.get(entry.collaboration)
            if head is None:
                head = heads[entry.collaboration] = self.head(entry.collaboration)
            nodes = self._synced(entry.collaboration)
            proof = merkle.inclusion_proof(nodes.perfect, entry.sequence - 1, head.size)
            out.append(Receipt(entry, head, tuple(proof)))
        return out
