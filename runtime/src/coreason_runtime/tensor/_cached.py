"""The subgoal cache on the request path: verified hits in, verified answers out.

A hit is served only if it still validates and passes the request's own verifiers; an answer
is admitted only when its verifiers passed, or when the request named none and was greedy
(asking again would give the same answer): never an unverified sample.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from coreason_runtime._events import EventBus, EventType
from coreason_runtime._exceptions import CoreasonError
from coreason_runtime.tensor._types import Attempt, Result

if TYPE_CHECKING:
    from coreason_runtime.tensor._attempts import RequestPlan
    from coreason_runtime.tensor._schema import SchemaSpec

__all__ = ["admit_to_cache", "from_cache"]

logger = logging.getLogger("coreason_runtime.router")


def from_cache(
    cache: Any, bus: EventBus, spec: SchemaSpec, plan: RequestPlan
) -> Result[Any] | None:
    """The cached answer to this request as tier ``"cache"`` at no cost, or None."""
    if cache is None:
        return None
    wf = plan.workflow_id
    try:
        hit = cache.lookup_request(spec.key, plan.prompt, workflow_id=wf)
    except CoreasonError:
        logger.exception("subgoal cache lookup failed; asking the tiers")
        return None
    if hit is None or hit.value_json is None:
        return None
    try:
        value = spec.validate_text(hit.value_json)
    except CoreasonError:
        return None  # a stale entry never reaches the user
    verdict = None
    if plan.verify is not None:  # a hit must pass this request's verifiers too
        from coreason_runtime.verify import run_checks

        verdict = run_checks(plan.verify.checks, value, timeout=plan.verify.timeout)
        if not verdict.ok:
            return None
    attempt = Attempt(tier="cache", index=1, ok=True, output=hit.value_json)
    bus.emit(
        EventType.REQUEST_FINISHED,
        workflow_id=wf,
        source="router",
        tier="cache",
        cost=0.0,
        attempts=1,
        duration_s=0.0,
    )
    return Result(
        value=value,
        tier="cache",
        attempts=[attempt],
        cost=0.0,
        workflow_id=wf,
        text=hit.value_json,
        schema_key=spec.key,
        verified=verdict is not None,
        verification=verdict,
    )


def admit_to_cache(cache: Any, spec: SchemaSpec, plan: RequestPlan, result: Result[Any]) -> None:
    """Offer ``result`` to the cache if it may enter (verified, or greedy with no verifier)."""
    if cache is None or result.tier == "cache" or result.thunks:
        return
    if not (result.verified or (plan.verify is None and plan.temperature == 0)):
        return
    value = result.value
    text = value.model_dump_json() if isinstance(value, BaseModel) else json.dumps(value)
    try:
        cache.admit_request(spec.key, plan.prompt, text, result.workflow_id)
    except CoreasonError:  # a cache that refuses must never fail an answered request
        logger.exception("subgoal cache admission failed")
