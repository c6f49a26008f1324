"""RFC 9162 Merkle trees: the published roots, and proofs that verify exactly when the trees agree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom_client import merkle

# The leaves and roots of Certificate Transparency's reference tests (the same in certificate-transparency-go and
# trillian): leaf data in hex, and the root after each of the first n leaves.
CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _tree(n: int, salt: bytes = b"") -> merkle.MerkleNodes:
    nodes = merkle.MerkleNodes()
    for i in range(n):
        nodes.append(merkle.leaf_hash(salt + i.to_bytes(4, "big")))
    return nodes


def test_the_roots_of_certificate_transparencys_reference_tree() -> None:
    nodes = merkle.MerkleNodes()
    for data in CT_LEAVES:
        nodes.append(merkle.leaf_hash(bytes.fromhex(data)))
    assert [nodes.root(n).hex() for n in range(1, 9)] == CT_ROOTS
    assert nodes.root(0) == merkle.EMPTY_ROOT


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_an_inclusion_proof_verifies_its_leaf_and_nothing_else(n: int, data: st.DataObject) -> None:
    nodes = _tree(n)
    m = data.draw(st.integers(0, n - 1))
    size = data.draw(st.integers(m + 1, n))
    proof = merkle.inclusion_proof(nodes.perfect, m, size)
    assert len(proof) <= size.bit_length()
    root = nodes.root(size)
    merkle.verify_inclusion(nodes.levels[0][m], m, size, proof, root)
    assert merkle.root_of(nodes.levels[0][:size]) == root
    with pytest.raises(merkle.ProofError):  # another leaf at that place
        merkle.verify_inclusion(merkle.leaf_hash(b"forged"), m, size, proof, root)
    if size > 1:
        other = (m + 1) % size
        with pytest.raises(merkle.ProofError):  # the same leaf claimed at another place
            merkle.verify_inclusion(nodes.levels[0][m], other, size, proof, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(nodes.levels[0][m], m, size, proof, merkle.leaf_hash(b"another root"))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_a_consistency_proof_holds_exactly_when_the_larger_tree_extends_the_smaller(
    n: int, data: st.DataObject
) -> None:
    nodes = _tree(n)
    first = data.draw(st.integers(0, n))
    proof = merkle.consistency_proof(nodes.perfect, first, n)
    assert len(proof) <= 2 * n.bit_length()
    merkle.verify_consistency(first, n, nodes.root(first), nodes.root(n), proof)
    if 0 < first < n:
        # a history rewritten at any leaf of the first tree: the rewritten log's proof cannot match the first root
        changed = data.draw(st.integers(0, first - 1))
        forged = merkle.MerkleNodes()
        for i, leaf in enumerate(nodes.levels[0]):
            forged.append(merkle.leaf_hash(b"rewritten") if i == changed else leaf)
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(
                first, n, nodes.root(first), forged.root(n), merkle.consistency_proof(forged.perfect, first, n)
            )


def test_a_smaller_or_different_tree_of_the_same_size_is_refused() -> None:
    nodes, other = _tree(10), _tree(10, salt=b"x")
    with pytest.raises(merkle.ProofError, match="shrank"):
        merkle.verify_consistency(10, 9, nodes.root(10), nodes.root(9), [])
    with pytest.raises(merkle.ProofError, match="rewritten"):
        merkle.verify_consistency(10, 10, nodes.root(10), other.root(10), [])
    merkle.verify_consistency(10, 10, nodes.root(10), nodes.root(10), [])


def test_incremental_nodes_equal_the_definition() -> None:
    nodes = _tree(1000)
    for n in (1, 2, 3, 255, 256, 257, 999, 1000):
        assert nodes.root(n) == merkle.root_of(nodes.levels[0][:n])
