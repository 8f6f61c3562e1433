"""Why a request went where it went: an answer record, in words.

Every answer carries its attempts (each level's score, threshold, tests,
tokens, cost, seconds) and its route (each decision of the policy with the
figures it weighed: scores against thresholds for the fixed cascade; the
quality estimates, plan values, mu and any exploration for the router).
`explain` lays them out for a person; `streamcascade explain ID` finds the
answer in an answers file (or stdin) and prints this.
"""

from __future__ import annotations

from streamcascade.schemas import CascadeAnswer


def explain(answer: CascadeAnswer) -> str:
    """The answer's story: who answered, each attempt, each decision.

    Examples
    --------
    >>> from streamcascade.schemas import RouteStep
    >>> answer = CascadeAnswer(id="t1", code="...", level=1, model="small", score=1.0,
    ...     attempts=[], tokens_in=10, tokens_out=5, seconds=0.5, cost_usd=0.0001,
    ...     route=[RouteStep(next_level=1, policy="fixed", why="start at the cheapest level"),
    ...            RouteStep(next_level=None, policy="fixed", why="scored 1.00 >= threshold 1.00: it answers")])
    >>> print(explain(answer))
    t1: answered by level 1 (small), score 1.00, 0.000100 USD, 0.50 s, tokens 10 in / 5 out
    route:
      1. fixed: start at the cheapest level -> level 1
      2. fixed: scored 1.00 >= threshold 1.00: it answers -> stop
    """  # noqa: E501 - a doctest's lines are what it prints
    lines = [
        f"{answer.id}: answered by level {answer.level} ({answer.model}), score "
        f"{answer.score:.2f}, {answer.cost_usd:.6f} USD, {answer.seconds:.2f} s, tokens "
        f"{answer.tokens_in} in / {answer.tokens_out} out"
    ]
    if answer.attempts:
        lines.append("attempts:")
    for attempt in answer.attempts:
        tests = ""
        if attempt.tests is not None:
            summary = attempt.tests
            tests = f", tests {summary.n_passed}/{summary.n_tests} passed"
            if summary.n_passed_untrusted:
                tests += f" ({summary.n_passed_untrusted} judged inside the sandbox)"
            if summary.n_timed_out:
                tests += f" ({summary.n_timed_out} timed out)"
            if summary.first_failure:
                tests += f", first failure: {summary.first_failure}"
        lines.append(
            f"  level {attempt.level} ({attempt.model}): score {attempt.score:.2f}, threshold "
            f"{attempt.threshold:.2f}, {'accepted' if attempt.accepted else 'not accepted'}"
            f"{tests}; {attempt.n_solutions} solutions, {attempt.n_generated_tests} tests "
            f"generated; {attempt.tokens_in} / {attempt.tokens_out} tokens, "
            f"{attempt.cost_usd:.6f} USD, {attempt.generation_s:.2f} s generating, "
            f"{attempt.sandbox_s:.2f} s in the sandbox"
        )
    if answer.route:
        lines.append("route:")
    for number, step in enumerate(answer.route, start=1):
        target = "stop" if step.next_level is None else f"level {step.next_level}"
        lines.append(f"  {number}. {step.policy}: {step.why} -> {target}")
    for label, levels in (
        ("skipped", answer.skipped_levels),
        ("explored (sent up for a label)", answer.explored_levels),
    ):
        if levels:
            lines.append(f"{label}: " + ", ".join(f"level {level}" for level in levels))
    for failure in answer.failed_levels:
        lines.append(f"failed: level {failure.level} ({failure.name}): {failure.reason}")
    return "\n".join(lines)
