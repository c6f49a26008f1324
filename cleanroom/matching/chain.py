"""The blinding chain: which member blinds whose points at which hop (PROTOCOL.md, section 9).

Members are ordered by name: m_0, m_1, ..., m_{N-1}. With two members this is the two-party protocol: each member's
points (blinded by itself, hop 0) go to the peer (hop 1), which answers with tags.

With three or more, the points member m_i uploads, blinded by k_i x r_i (its key and a one-time mask, hop 0), pass
to m_{i+1}, m_{i+2}, ... (indexes mod N), each applying its key and returning whole points (hops 1 .. N-1); then
they come back to m_i, which removes its mask and answers with tags (the final hop, N). The server shuffles the
points before every hop. Every point ends blinded by all N keys, so tags of the same identifier agree whoever
uploaded it; and no member ever sees another member's points without that member's one-time mask on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanroom_client.protocol import CHAIN_KIND, DOUBLE_BLINDED


@dataclass(frozen=True)
class Chain:
    """The members of a collaboration in chain order (by name)."""

    members: tuple[str, ...]

    @property
    def final(self) -> int:
        """The hop that answers with tags: the peer's (1) with two members, the origin's own (N) with more."""
        return 1 if len(self.members) == 2 else len(self.members)

    def hop(self, origin: str, member: str) -> int:
        """`member`'s hop in the chain of `origin`'s points: 1 .. N-1 for another member, N for the origin itself."""
        n = len(self.members)
        step = (self.members.index(member) - self.members.index(origin)) % n
        return step or n

    def at(self, origin: str, hop: int) -> str:
        """The member that blinds `origin`'s points at `hop` (hop 0 and hop N: the origin itself)."""
        n = len(self.members)
        return self.members[(self.members.index(origin) + hop) % n]

    def kind(self, origin: str) -> str:
        """The upload kind of a hop in `origin`'s chain: `double_blinded` with two members, else `blinded:<origin>`."""
        return DOUBLE_BLINDED if len(self.members) == 2 else CHAIN_KIND + origin

    def origins(self, member: str) -> tuple[str, ...]:
        """The chains `member` takes part in after its upload.

        Every other member's; with three or more members, its own too (the final hop).
        """
        if len(self.members) == 2:
            return tuple(m for m in self.members if m != member)
        return self.members
