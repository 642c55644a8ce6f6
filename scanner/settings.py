"""One validated settings object, read once at start-up.

Sources, strongest first: keyword arguments (tests, the CLI), environment variables prefixed ``SCANNER_``
(``SCANNER_DATABASE_URL``, ``SCANNER_BROKER_URL``, ...), then a TOML settings file named by
``SCANNER_SETTINGS_FILE``, then the defaults below.  No module of the project reads the environment itself:
processes call ``Settings()`` once and pass the object on.

With no broker configured the service runs embedded: SQLite under ``data_dir`` and analysis in-process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_ROBUST = REPO_ROOT / "models" / "pgd-at-preact18-w0.25"
BUNDLED_STANDARD = REPO_ROOT / "models" / "standard-preact18-w0.25"
# The default cap of images per scan: the API's schema states it and a crawl sends larger pages as several scans.
MAX_IMAGES_PER_SCAN = 256


def masked_url(url: str | None) -> str:
    """``url`` with its password (and any userinfo token) replaced by ``***``: for anything printed or logged."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        if parts.password is None and not (parts.username and "@" in parts.netloc):
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.username if parts.password is not None else None
        return urlunsplit(parts._replace(netloc=f"{user or ''}:***@{host}"))
    except ValueError:
        return "(unparseable URL hidden)"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "robust-scanner"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCANNER_", extra="forbid", validate_default=True)

    # --- storage and queue --------------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir, description="embedded database and files")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    broker_url: str | None = Field(None, description="Celery broker (redis://...); unset = in-process analysis")
    result_backend: str | None = Field(None, description="Celery result backend; default: the broker URL")
    broker_visibility_timeout_s: int = Field(3600, ge=10, description="Redis redelivery time of unacked tasks")

    secret_key: SecretStr | None = Field(
        None, description="Fernet key for secrets at rest; default: data_dir/secret.key (embedded mode)"
    )

    # --- models --------------------------------------------------------------------------------------------
    robust_bundle: Path = BUNDLED_ROBUST
    standard_bundle: Path = BUNDLED_STANDARD
    calibration: Path | None = Field(None, description="default: calibration.json beside the robust bundle")
    device: str = "auto"
    engine_threads: int | None = Field(None, ge=1)

    # --- API -------------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    cors_origins: list[str] = Field(
        default_factory=lambda: ["chrome-extension://*", "moz-extension://*"],
        description="origins allowed to call the API from a browser; '*' suffix matches any extension id",
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="whole request body")
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="one image, uploaded or fetched")
    max_image_pixels: int = Field(64 * 1024 * 1024, ge=1, description="width x height, checked before decoding")
    max_images_per_scan: int = Field(MAX_IMAGES_PER_SCAN, ge=1)
    rate_limit_per_minute: int = Field(600, ge=1, description="requests per key per minute (token bucket)")
    rate_limit_burst: int = Field(120, ge=1)
    auth_failures_per_minute: int = Field(
        30, ge=1, description="failed authentications per client address per minute before 429 (key guessing)"
    )
    auth_failures_burst: int = Field(20, ge=1)
    audit_min_interval_s: int = Field(900, ge=1, description="the most frequent schedule an audit may have")
    audits_per_tenant: int = Field(50, ge=1, description="audits a tenant may keep")
    audit_runs_per_tenant: int = Field(2, ge=1, description="audit runs of one tenant at once; the rest wait queued")
    audit_runs_per_process: int = Field(
        2, ge=1, description="audit runs one process executes at once (each a browser); the rest wait queued"
    )
    audit_manual_runs_per_hour: int = Field(4, ge=1, description="manual triggers of one audit per hour (429)")
    event_streams_per_key: int = Field(8, ge=1, description="open event streams (SSE) per key (429)")

    # --- fetching image URLs ----------------------------------------------------------------------------------
    fetch_timeout_s: float = Field(10.0, gt=0)
    fetch_max_redirects: int = Field(3, ge=0, le=10)
    fetch_concurrency: int = Field(8, ge=1)
    fetch_allow_private: bool = Field(False, description="allow loopback/private targets (intranet deployments)")
    fetch_any_port: bool = Field(False, description="allow ports other than 80 and 443")

    # --- workers ---------------------------------------------------------------------------------------------
    batch_size: int = Field(64, ge=1, le=1024, description="images per analysis task")
    max_deliveries: int = Field(3, ge=1, description="attempts before an image is dead-lettered")
    task_retries: int = Field(5, ge=0, description="retries of a task on transient faults (database, broker)")
    relay_interval_s: float = Field(2.0, gt=0, description="how often unqueued work is handed to the broker")
    requeue_after_s: float = Field(
        600.0, gt=0, description="pending work handed over this long ago is handed over again (a lost message)"
    )
    requeue_idle_s: float = Field(
        20.0,
        gt=0,
        description="with the queue empty, pending work handed over this long ago that no live worker holds is"
        " handed over again (a worker killed with unacknowledged messages)",
    )

    @field_validator("data_dir", "robust_bundle", "standard_bundle", "calibration", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'scanner.db'}"
        if self.broker_url and self.result_backend is None:
            self.result_backend = self.broker_url
        return self

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: the API analyses images itself."""
        return not self.broker_url

    @property
    def db_url(self) -> str:
        assert self.database_url is not None  # filled by the validator
        return self.database_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        settings_file = os.environ.get("SCANNER_SETTINGS_FILE")
        if settings_file:
            if not Path(settings_file).is_file():
                raise FileNotFoundError(f"SCANNER_SETTINGS_FILE={settings_file} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=settings_file))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """The settings of this process; a clear message instead of a traceback when they are invalid."""
    return Settings(**overrides)
