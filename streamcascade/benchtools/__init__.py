"""Servers and helpers for tests and benchmarks; the library never imports this."""
