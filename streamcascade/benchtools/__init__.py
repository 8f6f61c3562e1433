"""Benchmarks and fault tooling, out of the library's path: `bench` (levels and
cascades on recorded or live models), `learnbench`, `routebench` and
`budgetbench` (the learning benches), `perf`, `engine_perf` and `throughput`
(speed), `faults` (the service killed and restarted), and `servers` (real
OpenAI-compatible servers for tests and benches). The command line and the
tests import them; the library never does."""
