"""A CascadeAnswer from the attempts a request paid for."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from streamcascade.schemas import Attempt, CascadeAnswer, CodeRequest


class RequestFailed(RuntimeError):
    """No level could answer: the request is a dead letter with this reason
    (it starts with `backend_unavailable`)."""


def build_answer(
    request: CodeRequest, attempts: Sequence[Attempt], started_s: float, **fields: Any
) -> CascadeAnswer:
    """A CascadeAnswer whose tokens, cost and seconds are summed over every
    attempt paid for (`started_s` from time.perf_counter); `fields` say who answered."""
    return CascadeAnswer(
        id=request.id,
        attempts=list(attempts),
        tokens_in=sum(a.tokens_in for a in attempts),
        tokens_out=sum(a.tokens_out for a in attempts),
        seconds=time.perf_counter() - started_s,
        cost_usd=sum(a.cost_usd for a in attempts),
        kind=request.kind,
        metadata=request.metadata,
        **fields,
    )
