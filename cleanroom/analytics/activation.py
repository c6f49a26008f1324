"""Activation: the matched people of a segment (and of event conditions) released to the policy's recipient.

A disclosure the members agreed to, gated by a noisy size (`plan.activation_threshold`); one plan for
`QueryEngine.release`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import numpy as np

from cleanroom_client.policy import QueryType

from ..collaborations import Collaboration
from ..errors import InvalidArgumentError, PermissionDeniedError
from ..principals import Principal
from ..privacy import noise as noise_math
from ..privacy.budget import Charge
from .audiences import check_recipient_reads, delta_for, event_filters
from .cells import Cell, withheld
from .lookalike import _filters, segment_sql
from .matched import Catalog, MatchedData, clamp
from .plan import AudienceRelease, Outcome, Plan, QueryAnswer, Stated, activation_threshold
from .queries import ActivationQuery
from .segments import check_segment

if TYPE_CHECKING:
    from .engine import QueryEngine


def activate(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: ActivationQuery, preview: bool = False
) -> QueryAnswer:
    """Release the matched people of a segment to the policy's activation recipient: a disclosure, not DP.

    The policy names activation (recipient, the dimensions a segment may use, the minimum size k) and every
    member approved it. The list is released only when the segment's true size is at least k and its noisy
    size (sensitivity c) at least k + `activation_threshold`; so whether a list is released is (epsilon,
    delta)-DP, while the list itself is the disclosure the members agreed to. A segment must be decided by a
    member other than the recipient, with conditions that can exclude people (`segments.check_segment`), and
    those conditions must in fact exclude people: the list is withheld unless the noisy number of matched people
    they cut from what the recipient's own conditions keep is at least `activation_threshold` (a window the
    table can hold but nobody is in, or one person in, would otherwise hand over the intersection, or all of
    it but one). The requester receives the noisy size (or withheld); both ledgers are charged (epsilon, delta).
    """
    delta = q.delta or engine.authorize(principal, collaboration_id, QueryType.ACTIVATION).policy.delta_per_query_max

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        policy = collaboration.policy
        spec = policy.activation
        if spec is None:
            raise PermissionDeniedError("the policy does not name activation (recipient, dimensions, min_size)")
        segment = dict(q.segment)
        if segment:
            _filters(policy, segment, "segment")
        outside = sorted(str(d) for d in segment if str(d) not in spec.dimensions)
        if outside:
            raise InvalidArgumentError(
                f"segment: {outside} are not among the policy's activation dimensions {list(spec.dimensions)}"
            )
        times = event_filters(policy, q.events)
        check_segment(spec.recipient, segment, q.events, dt.datetime.now(dt.UTC).date())
        if principal.name == spec.recipient:
            raise PermissionDeniedError("the activation recipient may not request activation lists itself")
        check_recipient_reads(policy, spec.recipient, catalog)
        delta_for(catalog, delta)
        c = engine.stability(catalog)
        threshold = spec.min_size + activation_threshold(q.epsilon, delta, c)
        sql = segment_sql(catalog, segment, spec.recipient, q.events, times)
        # The matched people the recipient's own conditions keep: what the others' conditions must cut down.
        own = {d: v for d, v in segment.items() if d.member == spec.recipient}
        own_events = [e for e in q.events if e.member == spec.recipient]
        base_sql = segment_sql(catalog, own, spec.recipient, own_events, times)
        excluded_threshold = activation_threshold(q.epsilon, delta, c)

        def run(data: MatchedData) -> Outcome:
            members = np.asarray(data.arrays(sql)["row_id"], dtype=np.int64)
            base = len(data.arrays(base_sql)["row_id"])
            # Two cells of one partition of the base (in the segment; excluded by the others' conditions): one
            # person's rows move at most c matched people in it, so both are drawn at the scale c / epsilon.
            (noisy, noisy_excluded), scale = engine.noise.release(
                [clamp(len(members)), clamp(base - len(members))], c, q.epsilon
            )
            released = len(members) >= spec.min_size and noisy >= threshold and noisy_excluded >= excluded_threshold
            cell = (
                Cell(("audience",), "audience_size", float(noisy), float(noise_math.error_95(scale)), False)
                if released
                else withheld(("audience",), "audience_size")
            )
            audience = AudienceRelease("activation", spec.recipient, members) if released else None
            return Outcome(("part",), (cell,), {"audience_size": scale}, audience=audience)

        charges = (Charge(principal.name, q.epsilon, delta), Charge(spec.recipient, q.epsilon, delta))
        return Plan(charges, run, (Stated("audience_size", q.epsilon, c),))

    params = {"segment": {str(k): v for k, v in q.segment}, "events": [str(e) for e in q.events]}
    return engine.release(
        principal, collaboration_id, q, QueryType.ACTIVATION, params, build, delta=delta, preview=preview
    )
