"""Runs untrusted code: one child per program, limits, namespaces, per-assert results."""

from streamcascade.sandbox.runner import ExecutionResult, Sandbox, SandboxError

__all__ = ["ExecutionResult", "Sandbox", "SandboxError"]
