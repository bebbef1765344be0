"""Kiln's settings: `KILN_*` environment variables over an optional TOML/YAML config file.

Precedence, highest first: values passed in code (the CLI's flags), `KILN_*` environment
variables, the config file named by `KILN_CONFIG`, the defaults below. Every option is
documented by its `description`, which `kiln config show` and README.md repeat.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import secrets
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "KILN_"
CONFIG_ENV = "KILN_CONFIG"
SECRET_KEY_FILE = "secret.key"
MIN_SECRET_KEY_LENGTH = 32
KNOWN_WEAK_SECRETS = {"changeme", "change-me", "secret", "kiln", "password", "dev", "default"}
# `KILN_*` variables that are not settings, so no warning about them (README "Configuration"):
# the config file's name, and the test/CI tooling's knobs (.ci/run, scripts/, tests/peers/).
NON_SETTING_VARIABLES = frozenset({
    CONFIG_ENV, "KILN_REQUIRE_PEERS", "KILN_TEST_WORKERS", "KILN_VENV", "KILN_PYTHON", "KILN_CACHE",
    "KILN_CACHE_DIR", "KILN_PEERS_DIR", "KILN_HELM", "KILN_ETCD", "KILN_CHROMIUM", "KILN_KUBE_APISERVER",
    "KILN_KUBE_BUILD_TIMEOUT", "KILN_KUBE_KEEP_SRC", "KILN_KUBE_READY_TIMEOUT", "KILN_KUBE_APISERVER_ARGS",
    "KILN_GO_PARALLEL",
})
log = logging.getLogger(__name__)
_warned_variables: set[str] = set()


class ConfigError(Exception):
    """A setting or config file is wrong; the message says which and how to fix it."""


def default_data_dir() -> Path:
    """Where the embedded database and generated files live when `KILN_DATA_DIR` is unset."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kiln"


def embodied_per_node_hour(text: str) -> dict[str, Decimal]:
    """`class=kg,class=kg` → {class: kg CO2e per node-hour}; ValueError naming the bad part."""
    out: dict[str, Decimal] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, kg = part.partition("=")
        try:
            value = Decimal(kg.strip())
        except InvalidOperation:
            value = Decimal("NaN")
        if not name.strip() or not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.000001")):
            raise ValueError(f"{part!r} is not RESOURCE_CLASS=KG (kg CO2e per node-hour, ≥ 0, at most 6 decimals)")
        out[name.strip()] = value
    return out


class Settings(BaseSettings):
    """All of Kiln's settings. Environment: `KILN_<NAME>`; config file: `<name> = value`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory for the embedded SQLite database, the generated secret key and other state.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the database. Unset: SQLite file `kiln.db` in the data dir. "
        "Production: `postgresql://USER:PASSWORD@HOST:5432/DB` (psycopg 3).",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Key that encrypts secrets at rest (BMC passwords) and signs sessions; at least 32 "
        "random characters. Required outside --dev/demo mode, where one is generated into the data dir.",
    )
    dev: bool = Field(default=False, description="Development mode: generate a secret key, migrate on start-up.")
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text` for people; `json`: one object a line (time, level, logger, message, request id, "
        "user, tenant, node, trace id) for Loki and other log stores. Secrets are redacted in both.",
    )
    worker_metrics_port: int = Field(
        default=9465, ge=0, le=65535,
        description="Port of `kiln worker`'s own /metrics (collector cycle and bills-run durations); 0: none.",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1", description="Address `kiln worker` serves its /metrics on (`0.0.0.0`: every interface)."
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint that receives Kiln's traces (API requests, collector cycles, bills runs, "
        "provisioning operations), e.g. `http://otel-collector:4318`; unset: no tracing, no overhead.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest accepted HTTP request body in bytes (larger: 413)."
    )
    token_default_days: int = Field(
        default=90, ge=1, le=3650, description="Lifetime of a personal API token when none is asked for."
    )
    console_session_hours: float = Field(
        default=8, gt=0, le=720, description="Hours a console sign-in lasts (from sign-in; then sign in again)."
    )
    signin_max_failures: int = Field(
        default=10, ge=2, le=1000,
        description="Failed password sign-ins for one username before it is locked for KILN_SIGNIN_LOCK_MINUTES "
        "(one address is locked one failure earlier, so a single address can never lock a user out).",
    )
    signin_lock_minutes: int = Field(
        default=15, ge=1, le=1440, description="Minutes a username or address stays locked after too many failed sign-ins.",
    )
    argon2_time_cost: int = Field(default=3, ge=1, le=20, description="argon2id iterations for password hashes.")
    argon2_memory_kib: int = Field(
        default=65536, ge=8192, le=4194304, description="argon2id memory per password hash, KiB (64 MiB: RFC 9106's second choice)."
    )
    argon2_parallelism: int = Field(default=4, ge=1, le=64, description="argon2id lanes per password hash.")
    ironic_url: str | None = Field(
        default=None, description="Ironic API endpoint (e.g. `http://ironic:6385`); noauth unless Keystone is configured."
    )
    kubeconfig: str | None = Field(
        default=None, description="Kubeconfig file for the Metal3 driver and the Kubernetes collector."
    )
    metal3_namespace: str = Field(default="metal3", description="Namespace of Kiln's BareMetalHosts and BMC secrets.")
    kube_tenant_label: str = Field(
        default="kiln.io/tenant",
        description="Namespace label whose value is the Kiln tenant slug that the namespace's pods are charged to.",
    )
    opencost_url: str | None = Field(
        default=None,
        description="OpenCost API URL (e.g. `http://opencost.opencost:9003`); unset: no OpenCost collector.",
    )
    carbon_zone: str | None = Field(
        default=None,
        description="Grid zone (Electricity Maps' zone key, e.g. DE) of nodes that name none; unset: such nodes' "
        "energy has no emissions figure.",
    )
    embodied_emissions: str = Field(
        default="",
        description="Embodied (manufacturing) emissions per node-hour by resource class, kg CO2e: "
        "`gpu.h100=1.25,gpu.a100=0.9`; a leased node-hour carries its class's share. Empty: none counted.",
    )
    carbon_url: str | None = Field(
        default=None,
        description="Carbon-intensity source answering like Electricity Maps' `GET /v3/carbon-intensity/history?zone=Z` "
        "(e.g. `https://api.electricitymap.org`); `kiln carbon fetch` reads it. Unset: import CSV files only.",
    )
    carbon_token: SecretStr | None = Field(
        default=None, description="Token sent as the `auth-token` header to KILN_CARBON_URL.",
    )
    bulk_concurrency: int = Field(
        default=20, ge=1, le=200, description="How many nodes a bulk action works on at once."
    )
    operation_timeout: int = Field(
        default=3600, ge=5, description="Seconds an action may take before Kiln reports it as failed (timed out)."
    )
    sync_interval: int = Field(
        default=60, ge=5, description="Seconds between syncs of provision and power state from the drivers."
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus (or Thanos/Mimir) query URL holding dcgm-exporter / AMD exporter series; "
        "unset: no GPU collectors, charts from Kiln's own 5-minute rollups.",
    )
    prometheus_scrape_interval: int = Field(
        default=30, ge=1, description="Seconds between Prometheus' scrapes of the GPU exporters (for GPU-hours)."
    )
    dcgm_exporter_urls: str | None = Field(
        default=None,
        description="Comma-separated dcgm-exporter `/metrics` URLs Kiln scrapes itself (sites without Prometheus).",
    )
    rocm_exporter_urls: str | None = Field(
        default=None,
        description="Comma-separated AMD device-metrics-exporter `/metrics` URLs Kiln scrapes itself.",
    )
    gpu_interval: int = Field(default=60, ge=5, description="Seconds between GPU collector cycles (dcgm, rocm).")
    gpu_namespace_labels: str = Field(
        default="exported_namespace,namespace",
        description="Comma-separated labels of GPU exporter series that name the workload's namespace, preferred "
        "first. Prometheus writes `exported_namespace` when its scrape does not honour the exporter's labels (as "
        "dcgm-exporter's Helm chart sets up) and puts the exporter's own namespace in `namespace`: then set "
        "`exported_namespace` alone, or idle GPUs count as the exporter's namespace. The pod and container labels "
        "follow the same spellings (`exported_pod`)."
    )
    gpu_host_labels: str = Field(
        default="hostname,Hostname",
        description="Comma-separated labels of GPU exporter series that name the GPU's node, preferred first "
        "(dcgm-exporter 4.x writes `hostname`, earlier releases `Hostname`).",
    )
    kube_interval: int = Field(
        default=60, ge=5, description="Seconds between Kubernetes collector cycles (watches in between lists)."
    )
    opencost_interval: int = Field(default=3600, ge=60, description="Seconds between imports from OpenCost.")
    billing_interval: int = Field(
        default=3600, ge=60, description="Seconds between rebuilds of the running period's usage and draft bills "
        "(and budget alert checks) by `kiln worker`.",
    )
    rollup_retention_days: int = Field(
        default=400, ge=0, description="Days of 5-minute chart rollups (rollup_5m) to keep; older ones are removed "
        "daily by `kiln worker` (whole monthly partitions on PostgreSQL). 0 keeps them forever.",
    )
    health_history_retention_days: int = Field(
        default=90, ge=0, description="Days of health history to keep: BMC log entries in node histories and "
        "health readings of series no longer reported; removed daily by `kiln worker`. 0 keeps them forever.",
    )
    ipmi_interval: int = Field(default=60, ge=5, description="Seconds between IPMI polls of every node's BMC.")
    ipmi_timeout: float = Field(
        default=2.0, gt=0, le=60, description="Seconds to wait for each BMC answer before retrying."
    )
    ipmi_retries: int = Field(default=1, ge=0, le=5, description="Times an unanswered IPMI request is sent again.")
    ipmi_workers: int = Field(default=64, ge=1, le=512, description="BMCs polled at once by one worker.")
    ipmi_privilege: Literal["user", "operator", "admin"] = Field(
        default="user", description="Session privilege for IPMI polls: user, operator or admin. Some BMCs "
        "(OpenIPMI's ipmi_sim among them) answer DCMI power readings only above user. A node's own "
        "`ipmi_privilege` wins.",
    )
    ipmi_cipher_suite: int | None = Field(
        default=None,
        description="RMCP+ cipher suite for IPMI sessions (3 or 17); unset: try 17, then 3. "
        "A node's own `ipmi_cipher_suite` wins.",
    )
    redfish_interval: int = Field(default=60, ge=5, description="Seconds between Redfish polls of every node's BMC.")
    redfish_timeout: float = Field(default=5.0, gt=0, le=60, description="Seconds to wait for each Redfish answer.")
    redfish_target_timeout: float = Field(
        default=60.0, gt=0, le=600, description="Seconds one BMC's whole Redfish poll may take (a poll makes "
        "a few dozen requests); past it the target fails as timed out.",
    )
    redfish_workers: int = Field(default=32, ge=1, le=512, description="Redfish BMCs polled at once by one worker.")
    redfish_verify_tls: bool = Field(
        default=True, description="Check Redfish BMCs' TLS certificates (`redfish://`, `redfish+https://`); "
        "false for BMCs with self-signed certificates.",
    )
    worker_name: str | None = Field(
        default=None, description="Name of this `kiln worker` replica in target leases; unset: HOSTNAME-PID."
    )
    idle_cost_policy: Literal["platform", "share"] = Field(
        default="platform",
        description="Who pays for capacity nobody leased: `platform` (the operator absorbs it) or `share` "
        "(spread over tenants in proportion to their usage cost). Idle cost is shown either way.",
    )
    billing_account_name: str = Field(
        default="Kiln", min_length=1, max_length=200,
        description="The operator's name in FOCUS exports (BillingAccountName, ProviderName, InvoiceIssuerName).",
    )
    budget_webhook_url: str | None = Field(
        default=None, description="URL that budget and GPU-hours quota alerts are POSTed to as JSON; unset: alerts are only shown."
    )
    budget_webhook_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds to wait for the budget webhook before retrying on the next check."
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OIDC issuer URL (e.g. Keycloak `https://kc/realms/NAME`). Set to accept its bearer tokens.",
    )
    oidc_audience: str | None = Field(default=None, description="Required `aud` of OIDC tokens (the client id).")
    oidc_client_secret: SecretStr | None = Field(
        default=None,
        description="Client secret of the console's OIDC client (confidential clients); unset: public client with PKCE.",
    )
    oidc_jwks_url: str | None = Field(
        default=None, description="JWKS URL; unset: taken from the issuer's /.well-known/openid-configuration."
    )
    oidc_roles_claim: str = Field(
        default="realm_access.roles", description="Dotted path of the claim that lists the caller's roles."
    )
    oidc_role_prefix: str = Field(
        default="", description="Prefix of role names in the roles claim (e.g. `kiln-` for `kiln-finance`)."
    )
    oidc_tenants_claim: str = Field(
        default="groups", description="Dotted path of the claim that lists tenant slugs (a leading `/` is ignored)."
    )
    oidc_username_claim: str = Field(
        default="preferred_username", description="Claim used as the caller's name in the audit log."
    )

    @field_validator("ipmi_cipher_suite")
    @classmethod
    def _known_suite(cls, value: int | None) -> int | None:
        if value is not None and value not in {3, 17}:
            raise ValueError("Kiln speaks RMCP+ cipher suites 3 and 17; leave unset to try 17, then 3")
        return value

    @field_validator("gpu_namespace_labels", "gpu_host_labels")
    @classmethod
    def _label_list(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        bad = [name for name in names if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name)]
        if not names or bad:
            raise ValueError(f"give Prometheus label names separated by commas (not {', '.join(bad) or 'nothing'})")
        return ",".join(names)

    @field_validator("carbon_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", value):
            raise ValueError(f"{value!r} is not a zone key: letters, digits, '-' and '_' (e.g. DE, US-CAL-CISO)")
        return value

    @field_validator("embodied_emissions")
    @classmethod
    def _embodied(cls, value: str) -> str:
        embodied_per_node_hour(value)  # refuses what it cannot read
        return value

    @property
    def embodied_kg_per_node_hour(self) -> dict[str, Decimal]:
        """KILN_EMBODIED_EMISSIONS as resource class → kg CO2e per node-hour."""
        return embodied_per_node_hour(self.embodied_emissions)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_http_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://otel-collector:4318 (OTLP/HTTP)")
        return value or None

    @field_validator("database_url")
    @classmethod
    def _psycopg3(cls, value: str | None) -> str | None:
        if value and re.match(r"^postgres(ql)?://", value):
            return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", value)
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL to connect to (the embedded SQLite file when none is set)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'kiln.db'}"

    @staticmethod
    def names(value: str) -> tuple[str, ...]:
        """A comma-separated setting as a tuple (label lists)."""
        return tuple(name for name in value.split(",") if name)

    @property
    def oidc_enabled(self) -> bool:
        """Whether bearer JWTs from an OIDC issuer are accepted."""
        return bool(self.oidc_issuer)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, ConfigFileSource(settings_cls))


class ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the TOML or YAML file named by `KILN_CONFIG`; unknown keys are errors with a line number."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        raise NotImplementedError  # __call__ below returns all values at once

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_ENV)
        return read_config_file(Path(path)).values if path else {}


class ConfigFile:
    """A parsed config file: its values and the line each key was found on."""

    def __init__(self, path: Path, values: dict[str, Any], lines: dict[str, int]):
        self.path, self.values, self.lines = path, values, lines

    def where(self, key: str) -> str:
        """`FILE line N` for a key, for error messages."""
        line = self.lines.get(key)
        return f"{self.path} line {line}" if line else str(self.path)


def read_config_file(path: Path) -> ConfigFile:
    """Parse a TOML (`.toml`) or YAML (`.yaml`/`.yml`) config file and reject unknown keys."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.suffix == ".toml":
        import tomllib  # here, as yaml below: most commands read no config file

        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        lines = _toml_key_lines(text)
    elif path.suffix in {".yaml", ".yml"}:
        import yaml

        try:
            node = yaml.compose(text)
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must be a mapping of setting names to values")
        lines = {k.value: k.start_mark.line + 1 for k, _ in (node.value if node else [])}
    else:
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    config = ConfigFile(path, values, lines)
    for key in values:
        if key not in Settings.model_fields:
            known = ", ".join(sorted(Settings.model_fields))
            raise ConfigError(f"{config.where(key)}: unknown setting '{key}' (known: {known})")
    return config


def _toml_key_lines(text: str) -> dict[str, int]:
    lines = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"\s*([A-Za-z0-9_]+)\s*=", line)
        if match:
            lines.setdefault(match.group(1), number)
    return lines


def unknown_environment_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """`KILN_*` variables that are neither settings nor NON_SETTING_VARIABLES, each with the
    closest setting's variable (None when nothing is close)."""
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    unknown = {}
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known and name not in NON_SETTING_VARIABLES:
            unknown[name] = next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None)
    return unknown


def warn_unknown_environment(environ: Mapping[str, str] | None = None) -> None:
    """Log a warning, once per variable and process, for each unknown `KILN_*` variable (Kiln
    ignores them: a misspelt name would otherwise go unnoticed). Values are never logged."""
    for name, closest in unknown_environment_variables(os.environ if environ is None else environ).items():
        if name not in _warned_variables:
            _warned_variables.add(name)
            hint = f" (did you mean {closest}?)" if closest else ""
            log.warning("environment variable %s is not a Kiln setting and is ignored%s", name, hint)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from code overrides, the environment and the config file; errors name their source."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    warn_unknown_environment()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, overrides)) from None


def _describe_validation_error(exc: ValidationError, overrides: dict[str, Any]) -> str:
    config_path = os.environ.get(CONFIG_ENV)
    config = read_config_file(Path(config_path)) if config_path else None
    problems = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "?"
        if key in overrides:
            origin = f"option --{key.replace('_', '-')}"
        elif ENV_PREFIX + key.upper() in os.environ:
            origin = f"environment {ENV_PREFIX}{key.upper()}"
        elif config and key in config.values:
            origin = f"{config.where(key)}: setting '{key}'"
        else:
            origin = f"setting '{key}'"
        problems.append(f"{origin}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)


def resolve_secret_key(settings: Settings) -> str:
    """Return the secret key, refusing a missing or weak one outside development mode.

    Order: `KILN_SECRET_KEY`; the generated `secret.key` in the data dir; in dev mode a new
    random key written there (mode 0600).
    """
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value()
        weak = len(key) < MIN_SECRET_KEY_LENGTH or key.lower() in KNOWN_WEAK_SECRETS
        if weak and not settings.dev:
            raise ConfigError(
                f"KILN_SECRET_KEY is too weak: use at least {MIN_SECRET_KEY_LENGTH} random characters, "
                "e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return key
    key_file = settings.data_dir / SECRET_KEY_FILE
    if key_file.exists():
        return key_file.read_text().strip()
    if not settings.dev:
        raise ConfigError(
            "KILN_SECRET_KEY is not set: set it to at least 32 random characters "
            "(`python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`), or run with --dev for a local trial"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key
