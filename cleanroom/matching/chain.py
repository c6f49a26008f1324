"""The blinding chain: which member blinds whose points at which hop (PROTOCOL.md, "Three or more members").

Members are ordered by name: m_0, m_1, ..., m_{N-1}. The points member m_i uploads (blinded once, by itself) pass to
m_{i+1}, m_{i+2}, ... (indexes mod N), each applying its key, N - 1 hops in all; the server shuffles the points
before every hop. Hops before the last return 32-byte points; the last returns 8-byte tags, which the server
un-shuffles onto m_i's rows. With two members this is the two-party protocol: one hop, the peer's, returning tags.

Every member's points end blinded by all N keys, so tags of the same identifier agree whoever uploaded it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .progress import DOUBLE_BLINDED

#: Upload kind of a member's hop in another member's chain, with three or more members: `blinded:<origin>`.
CHAIN_KIND = "blinded:"


@dataclass(frozen=True)
class Chain:
    """The members of a collaboration in chain order (by name)."""

    members: tuple[str, ...]

    @property
    def hops(self) -> int:
        """Hops in every member's chain: N - 1."""
        return len(self.members) - 1

    def hop(self, origin: str, member: str) -> int:
        """`member`'s hop (1 .. N-1) in the chain of `origin`'s points."""
        n = len(self.members)
        return (self.members.index(member) - self.members.index(origin)) % n

    def at(self, origin: str, hop: int) -> str:
        """The member that blinds `origin`'s points at `hop` (hop 0: the origin itself, which uploads them)."""
        n = len(self.members)
        return self.members[(self.members.index(origin) + hop) % n]

    def kind(self, origin: str) -> str:
        """The upload kind of a hop in `origin`'s chain: `double_blinded` with two members, else `blinded:<origin>`."""
        return DOUBLE_BLINDED if len(self.members) == 2 else CHAIN_KIND + origin

    def origins(self, member: str) -> tuple[str, ...]:
        """The members whose points `member` blinds: every other member."""
        return tuple(m for m in self.members if m != member)
