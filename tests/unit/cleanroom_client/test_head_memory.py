"""Two SDK processes on one state directory: what one of them found must never be erased by the other.

Each `HeadMemory` below stands for a process (its own lock, its own file handles); the consistency fetch is the
network round trip during which the other process runs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom_client import merkle
from cleanroom_client.errors import CleanRoomError
from cleanroom_client.head_memory import HeadMemory
from cleanroom_client.transparency import HistoryRewrittenError, TreeHead

COLLAB = "c"


def _heads(key: Ed25519PrivateKey, n: int) -> tuple[merkle.MerkleNodes, list[TreeHead]]:
    nodes = merkle.MerkleNodes()
    for i in range(n):
        nodes.append(merkle.leaf_hash(bytes([i]) * 96))
    heads = []
    for size in range(n + 1):
        unsigned = TreeHead(COLLAB, size, nodes.root(size), "2026-12-06T00:00:00Z")
        heads.append(TreeHead(COLLAB, size, unsigned.root, unsigned.time, key.sign(unsigned.message())))
    return nodes, heads


def test_an_incident_found_by_one_process_survives_another_processs_concurrent_accept(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    nodes, heads = _heads(key, 3)
    first, second = HeadMemory(tmp_path, key.public_key()), HeadMemory(tmp_path, key.public_key())
    first.accept(COLLAB, heads[2], lambda *a: [])
    entered, recorded = threading.Event(), threading.Event()

    def slow_fetch(collaboration: str, a: int, b: int) -> list[bytes]:
        entered.set()
        recorded.wait(timeout=1.0)  # the round trip, during which the other process finds a rewrite
        return merkle.consistency_proof(nodes.perfect, a, b)

    def other_process() -> None:
        try:
            second.record_incident(COLLAB, "a receipt does not prove its entry", heads[1])
        except HistoryRewrittenError:
            pass
        finally:
            recorded.set()

    grow = threading.Thread(target=first.accept, args=(COLLAB, heads[3], slow_fetch))
    grow.start()
    assert entered.wait(timeout=5)
    finder = threading.Thread(target=other_process)
    finder.start()
    grow.join(timeout=10)
    finder.join(timeout=10)
    assert first.incident(COLLAB) is not None, "the other process's incident was overwritten"
    with pytest.raises(HistoryRewrittenError, match="acknowledge"):
        second.require_no_incident(COLLAB)


def test_a_state_file_that_cannot_be_read_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    _, heads = _heads(key, 2)
    memory = HeadMemory(tmp_path, key.public_key())
    memory.accept(COLLAB, heads[2], lambda *a: [])
    (state,) = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    state.write_text('{"head": {"size": 2, "ro')  # a torn write
    with pytest.raises(CleanRoomError, match="cannot be read"):
        memory.accept(COLLAB, heads[1], lambda *a: [])
    assert state.read_text() == '{"head": {"size": 2, "ro'  # nothing overwritten: the user can look into it


def test_a_proof_the_server_cannot_send_now_is_its_error_not_a_rewritten_history(tmp_path: Path) -> None:
    """Over a rate limit (or unavailable) is no evidence against the history: raised as it is, no incident kept.

    Found by the full suite: a member on probation after 45 budget refusals got RESOURCE_EXHAUSTED for the
    consistency proof of its next budget read, which the SDK reported as a rewritten history and then refused the
    collaboration until acknowledged.
    """
    from cleanroom_client.errors import InvalidArgumentError, ResourceExhaustedError

    key = Ed25519PrivateKey.generate()
    nodes, heads = _heads(key, 3)
    memory = HeadMemory(tmp_path, key.public_key())
    memory.accept(COLLAB, heads[1], lambda *a: [])

    def limited(*_: object) -> list[bytes]:
        raise ResourceExhaustedError("RESOURCE_EXHAUSTED", "you (brand) are over the limit on refused calls")

    with pytest.raises(ResourceExhaustedError):
        memory.accept(COLLAB, heads[3], limited)
    assert memory.incident(COLLAB) is None
    memory.accept(COLLAB, heads[3], lambda _c, a, b: merkle.consistency_proof(nodes.perfect, a, b))
    assert memory.head(COLLAB) == heads[3]

    def beyond(*_: object) -> list[bytes]:  # the server no longer holds the size this client saw: evidence
        raise InvalidArgumentError("INVALID_ARGUMENT", "the log has 1 entries, not 3")

    with pytest.raises(HistoryRewrittenError, match="shrank"):
        memory.accept(COLLAB, heads[1], beyond)
    assert memory.incident(COLLAB) is not None
