"""The one-time mask of a chain of three or more members: k x r and r^-1 as X25519 scalars."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom_client.chain_mask import ORDER, as_scalar, chain_scalars, clamp


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_the_mask_cancels_modulo_the_group_order(key: bytes) -> None:
    upload, unmask = chain_scalars(key)
    assert clamp(upload) * clamp(unmask) % ORDER == clamp(key) % ORDER
    assert clamp(upload) == int.from_bytes(upload, "little")  # X25519 uses both unchanged
    assert clamp(unmask) == int.from_bytes(unmask, "little")
    assert chain_scalars(key) == (upload, unmask)  # deterministic: a resumed match derives the same mask
    assert upload != key


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=ORDER - 1))
def test_a_representable_scalar_acts_as_its_value(value: int) -> None:
    raw = as_scalar(value)
    if raw is not None:
        assert clamp(raw) % ORDER == value
        assert 2**254 <= int.from_bytes(raw, "little") < 2**255
