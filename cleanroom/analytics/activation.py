"""Activation: the matched people of a segment (and of event conditions) released to the policy's recipient.

A disclosure the members agreed to, gated by a noisy size (`plan.activation_threshold`); one plan for
`QueryEngine.release`.
"""

from __future__ import annotations

import datetime as dt
import math
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
from .matched import Catalog, MatchedData, Sql, clamp
from .plan import AudienceRelease, Outcome, Plan, Previewed, QueryAnswer, Stated, Typical, activation_threshold
from .queries import ActivationQuery
from .segments import check_segment

if TYPE_CHECKING:
    from .engine import QueryEngine


def epsilon_to_clear(noisy: int, min_size: int, delta: float, sensitivity: int) -> float | None:
    """The least epsilon at which a noisy size of `noisy` clears min_size + `activation_threshold`; None if none.

    The threshold's margin is ceil(c ln(1/delta) / epsilon) + c - 1, so noisy >= min_size + margin exactly when
    epsilon >= c ln(1/delta) / (noisy - min_size - c + 1). Post-processing of a released noisy size: free.
    """
    room = noisy - min_size - sensitivity + 1
    if room <= 0:
        return None
    e = sensitivity * math.log(1 / delta) / room
    while min_size + activation_threshold(e, delta, sensitivity) > noisy:  # float rounding: err up, never down
        e = math.nextafter(e, math.inf)
    return e


def activation_reason(noisy: int, min_size: int, epsilon: float, delta: float, sensitivity: int) -> str:
    """Why a segment of noisy size `noisy` is not released at `epsilon`: its threshold, and the epsilon clearing it."""
    threshold = min_size + activation_threshold(epsilon, delta, sensitivity)
    need = epsilon_to_clear(noisy, min_size, delta, sensitivity)
    return f"below the activation threshold of {threshold} people at epsilon {epsilon:g} (noisy size {noisy}); " + (
        f"a segment of this size would be released at epsilon >= {need:.3g}"
        if need is not None
        else f"no epsilon releases a segment this size (the policy's minimum is {min_size})"
    )


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
        own_sql = segment_sql(catalog, own, spec.recipient, own_events, times)
        base_sql = Sql(f"SELECT count(*) FROM ({own_sql.text})", own_sql.params)  # only its size is needed
        excluded_threshold = activation_threshold(q.epsilon, delta, c)

        def run(data: MatchedData) -> Outcome:
            members = np.asarray(data.arrays(sql)["row_id"], dtype=np.int64)
            (base,) = data.rows(base_sql)[0]
            # Two cells of one partition of the base (in the segment; excluded by the others' conditions): one
            # person's rows move at most c matched people in it, so both are drawn at the scale c / epsilon.
            (noisy, noisy_excluded), scale = engine.noise.release(
                [clamp(len(members)), clamp(base - len(members))], c, q.epsilon
            )
            released = len(members) >= spec.min_size and noisy >= threshold and noisy_excluded >= excluded_threshold
            # The reason is post-processing of the two noisy sizes (and of the decision, already (epsilon, delta)-DP)
            if noisy < threshold:
                why = activation_reason(noisy, spec.min_size, q.epsilon, delta, c)
            elif noisy_excluded < excluded_threshold:
                why = (
                    f"the other members' conditions exclude too few of the people the recipient's own keep (noisy "
                    f"{noisy_excluded}, below {excluded_threshold} at epsilon {q.epsilon:g}): the list would "
                    "hand over the recipient's own selection"
                )
            else:
                why = f"the segment's size is below the policy's minimum of {spec.min_size}"
            cell = (
                Cell(("audience",), "audience_size", float(noisy), float(noise_math.error_95(scale)), False)
                if released
                else withheld(("audience",), "audience_size", why)
            )
            audience = AudienceRelease("activation", spec.recipient, members) if released else None
            return Outcome(("part",), (cell,), {"audience_size": scale}, audience=audience)

        def preview(t: Typical, at: float) -> Previewed:
            # a segment of the typical size, and as many people excluded by the others' conditions
            v = t.values.get("audience_size", t.group)
            size = round(v[0] if isinstance(v, tuple) else v)
            gate = spec.min_size + activation_threshold(at, delta, c)
            bar = float(noise_math.error_95(c / at))
            cells = (
                Cell(("audience",), "audience_size", float(size), bar, False)
                if size >= gate
                else withheld(("audience",), "audience_size", activation_reason(size, spec.min_size, at, delta, c)),
                Cell(("threshold",), "release_threshold", float(gate), 0.0, False),
            )
            return Previewed(cells, {"audience_size": float(size)})

        charges = (Charge(principal.name, q.epsilon, delta), Charge(spec.recipient, q.epsilon, delta))
        return Plan(charges, run, (Stated("audience_size", q.epsilon, c),), preview, ("part",))

    params = {"segment": {str(k): v for k, v in q.segment}, "events": [str(e) for e in q.events]}
    return engine.release(
        principal, collaboration_id, q, QueryType.ACTIVATION, params, build, delta=delta, preview=preview
    )
