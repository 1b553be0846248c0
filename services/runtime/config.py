"""Configuration, read once from environment variables into frozen dataclasses.

Every variable Kiln reads is declared here, with its default and a docstring;
`docs/configuration.md` is generated from these declarations (`make docs-config`) so the two
cannot drift apart.
Nothing else in Kiln reads `os.environ` for settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.runtime.errors import ConfigError

#: The services and their default ports: (gRPC, metrics HTTP).
SERVICE_PORTS: dict[str, tuple[int, int]] = {
    "objects": (50051, 9101),
    "jobs": (50052, 9102),
    "render": (50053, 9103),
    "archive": (50054, 9104),
}
SERVICE_NAMES: tuple[str, ...] = tuple(SERVICE_PORTS)


def _env_field(var: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": var, "doc": doc})


@dataclass(frozen=True)
class StorageConfig:
    """Where blobs live: any S3 endpoint (SeaweedFS embedded, MinIO in production)."""

    endpoint: str = _env_field("KILN_S3_ENDPOINT", "127.0.0.1:9000", "S3 endpoint as host:port.")
    """S3 endpoint as host:port."""
    access_key: str = _env_field("KILN_S3_ACCESS_KEY", "kiln", "S3 access key.")
    """S3 access key."""
    secret_key: str = _env_field("KILN_S3_SECRET_KEY", "kiln-secret-key", "S3 secret key.")
    """S3 secret key."""
    secure: bool = _env_field("KILN_S3_SECURE", False, "Use HTTPS to reach S3.")
    """Use HTTPS to reach S3."""
    region: str = _env_field("KILN_S3_REGION", "us-east-1", "S3 region used for signing.")
    """S3 region used for signing."""
    bucket: str = _env_field(
        "KILN_S3_BUCKET", "kiln", "Bucket for every artifact; created at start."
    )
    """Bucket for every artifact; created at start if missing."""
    public_endpoint: str = _env_field(
        "KILN_S3_PUBLIC_ENDPOINT",
        "",
        "host:port clients use for presigned URLs, when it differs from KILN_S3_ENDPOINT.",
    )
    """host:port that clients use for presigned URLs, when it differs from the endpoint."""
    presign_expiry_seconds: int = _env_field(
        "KILN_PRESIGN_EXPIRY_SECONDS", 3600, "Lifetime of presigned download URLs."
    )
    """Lifetime of presigned download URLs, in seconds (at most 7 days, S3's limit)."""
    part_size: int = _env_field(
        "KILN_S3_PART_SIZE", 8 * 1024 * 1024, "Multipart upload part size in bytes (>= 5 MiB)."
    )
    """Multipart upload part size in bytes (S3 needs at least 5 MiB)."""


@dataclass(frozen=True)
class AuthConfig:
    """How access tokens are signed (gateway) and verified (every service)."""

    issuer: str = _env_field("KILN_JWT_ISSUER", "kiln", "The iss claim of Kiln's tokens.")
    """The `iss` claim of Kiln's tokens; tokens from another issuer are refused."""
    private_key_file: str = _env_field(
        "KILN_JWT_PRIVATE_KEY_FILE",
        "",
        "Ed25519 PEM private key the gateway signs with (default: <data dir>/keys/jwt.pem).",
    )
    """Ed25519 PEM private key the gateway signs tokens with (default `<data dir>/keys/jwt.pem`)."""
    public_key_files: str = _env_field(
        "KILN_JWT_PUBLIC_KEY_FILES",
        "",
        "Comma-separated Ed25519 PEM public keys accepted (default: <data dir>/keys/jwt.pub.pem).",
    )
    """Comma-separated PEM public keys whose signatures are accepted; list the old and the new
    key while rotating (default `<data dir>/keys/jwt.pub.pem`)."""
    token_ttl_seconds: int = _env_field(
        "KILN_TOKEN_TTL_SECONDS", 43200, "Lifetime of issued access tokens (default 12 h)."
    )
    """Lifetime of issued access tokens, in seconds (default 12 h, as SideFX's)."""


@dataclass(frozen=True)
class JobsConfig:
    """How the jobs service retries, expires and keeps jobs."""

    max_attempts: int = _env_field(
        "KILN_JOBS_MAX_ATTEMPTS", 3, "Attempts a job gets unless it asks for another number."
    )
    """Attempts a job gets when its creator asks for none; a job whose last attempt fails (or
    whose worker's lease expires on the last attempt) ends FAILED with the last error."""
    backoff_seconds: float = _env_field(
        "KILN_JOBS_BACKOFF_SECONDS", 1.0, "Delay before the first retry; doubles per attempt."
    )
    """Delay before a job's first retry, in seconds; each later retry waits twice as long."""
    backoff_max_seconds: float = _env_field(
        "KILN_JOBS_BACKOFF_MAX_SECONDS", 300.0, "Longest delay between retries."
    )
    """Cap on the retry delay, in seconds."""
    retention_seconds: int = _env_field(
        "KILN_JOBS_RETENTION_SECONDS",
        7 * 24 * 3600,
        "How long finished jobs and their outputs are kept (default 7 days).",
    )
    """How long a finished job, its history and its output files are kept, in seconds."""
    reap_interval_seconds: float = _env_field(
        "KILN_JOBS_REAP_INTERVAL_SECONDS",
        1.0,
        "How often expired leases are requeued and old jobs purged.",
    )
    """How often, in seconds, each replica requeues jobs whose lease expired (and, a hundred
    times less often, purges jobs past their retention)."""
    tenant_concurrency: str = _env_field(
        "KILN_JOBS_TENANT_CONCURRENCY",
        "scene.import=4,scene.export=4,scene.render=4,archive.create=4,image.edit_batch=4",
        "Most running jobs of one tenant per expensive kind (kind=N, comma-separated).",
    )
    """Most jobs of one kind one tenant may have running at once, as `kind=N` pairs separated
    by commas (empty: no caps). Further jobs of that tenant wait queued while other tenants'
    jobs run, so one tenant's burst cannot take every worker. The cap is read when a job is
    leased; workers leasing at the same instant on PostgreSQL may each start one more."""

    def tenant_caps(self) -> dict[str, int]:
        """`tenant_concurrency` parsed: kind → most running jobs per tenant."""
        caps: dict[str, int] = {}
        for item in self.tenant_concurrency.split(","):
            if not item.strip():
                continue
            kind, _, number = item.partition("=")
            if not kind.strip() or not number.strip().isdigit() or int(number) < 1:
                raise ConfigError(
                    f"KILN_JOBS_TENANT_CONCURRENCY: {item.strip()!r} is not kind=N with N >= 1"
                )
            caps[kind.strip()] = int(number)
        return caps


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker process (render, archive) leases and runs jobs."""

    token_file: str = _env_field(
        "KILN_WORKER_TOKEN_FILE",
        "",
        "Access token with the jobs.worker scope (default: <data dir>/keys/worker.token).",
    )
    """File holding the worker's access token (scope `jobs.worker`); re-read when the token
    nears expiry, so rotating the file rotates the token
    (default `<data dir>/keys/worker.token`)."""
    concurrency: int = _env_field(
        "KILN_WORKER_CONCURRENCY", 4, "Jobs one worker process runs at once."
    )
    """Jobs one worker process runs at once."""
    lease_seconds: float = _env_field(
        "KILN_WORKER_LEASE_SECONDS", 30.0, "Lease length; a silent worker's jobs return after it."
    )
    """Length of each lease, in seconds: a worker that stops heartbeating loses its jobs to the
    queue this long after its last heartbeat."""
    stream: bool = _env_field(
        "KILN_WORKER_STREAM",
        True,
        "Lease and complete on one WorkerService.Work stream instead of unary calls.",
    )
    """Whether the worker leases and completes jobs on one `WorkerService.Work` stream (credit
    out, leases in) instead of `LeaseJobs` and `CompleteJobs` calls. A jobs service without
    Work is detected and served with the calls either way."""
    heartbeat_seconds: float = _env_field(
        "KILN_WORKER_HEARTBEAT_SECONDS",
        5.0,
        "Heartbeat period; a cancel reaches a running job within it.",
    )
    """Heartbeat period, in seconds; cancellation reaches a running job within one period.
    Must be under half the lease."""


@dataclass(frozen=True)
class ImagingConfig:
    """Limits and fetching rules of image editing (the render service)."""

    max_input_megapixels: float = _env_field(
        "KILN_IMAGE_MAX_INPUT_MEGAPIXELS", 100.0, "Largest input image, in megapixels."
    )
    """Largest input image, in megapixels; a larger one is refused from its header, before any
    pixel is decoded (Claid's 422, `error_type` "image")."""
    max_output_megapixels: float = _env_field(
        "KILN_IMAGE_MAX_OUTPUT_MEGAPIXELS", 100.0, "Largest output image, in megapixels."
    )
    """Largest output image, in megapixels (resizing by percent or a canvas can grow an image)."""
    fetch_allowlist: str = _env_field(
        "KILN_FETCH_ALLOWLIST",
        "",
        "Hosts or CIDR ranges http(s) inputs may reach although private or loopback.",
    )
    """Comma-separated host names and CIDR ranges that http(s) inputs and outputs may reach
    even though they resolve to loopback, private, link-local or otherwise non-public
    addresses (empty: only public addresses)."""
    fetch_max_bytes: int = _env_field(
        "KILN_FETCH_MAX_BYTES", 64 * 1024 * 1024, "Largest input file fetched or uploaded."
    )
    """Largest input file, in bytes, fetched from a URL or a storage, or uploaded."""
    fetch_timeout_seconds: float = _env_field(
        "KILN_FETCH_TIMEOUT_SECONDS", 30.0, "Time limit of one input fetch."
    )
    """Time limit of one fetch (connect, headers and body together), in seconds."""
    tmp_url_seconds: int = _env_field(
        "KILN_IMAGE_TMP_URL_SECONDS",
        24 * 3600,
        "Lifetime of an edit's temporary output and its tmp_url (default 24 h).",
    )
    """How long an output without `destination` is kept in the temporary area, and how long
    its presigned `tmp_url` stays valid, in seconds (at most 7 days, S3's presign limit)."""
    threads: int = _env_field("KILN_IMAGE_THREADS", 2, "Images one render process edits at once.")
    """Images one render process edits at once (sync calls and jobs together); each edit
    also uses libvips' own worker threads."""


@dataclass(frozen=True)
class ScenesConfig:
    """Budgets of scene import and render (the render service)."""

    max_import_bytes: int = _env_field(
        "KILN_SCENE_MAX_IMPORT_BYTES", 512 * 1024 * 1024, "Largest import, all files together."
    )
    """Largest import, in bytes, all its files together; one file may be at most half of it."""
    max_import_files: int = _env_field(
        "KILN_SCENE_MAX_IMPORT_FILES", 64, "Most files in one import."
    )
    """Most files (models, materials, textures, buffers) in one import."""
    max_triangles: int = _env_field(
        "KILN_SCENE_MAX_TRIANGLES", 5_000_000, "Most triangles one import may create."
    )
    """Most triangles one import may create; a larger model is refused (422) and imports
    nothing."""
    import_seconds: float = _env_field(
        "KILN_SCENE_IMPORT_SECONDS", 120.0, "Time limit of parsing one import."
    )
    """Time limit, in seconds, of parsing one import's files (in a child process that is
    killed when it runs over)."""
    import_memory_bytes: int = _env_field(
        "KILN_SCENE_IMPORT_MEMORY_BYTES",
        4 * 1024**3,
        "Address-space limit of the process that parses an import.",
    )
    """Address-space limit (RLIMIT_AS), in bytes, of the child process that parses an import."""
    max_render_pixels: int = _env_field(
        "KILN_RENDER_MAX_PIXELS", 4096 * 4096, "Largest render, width times height."
    )
    """Largest render, width times height, in pixels."""
    mesh_cache_bytes: int = _env_field(
        "KILN_RENDER_MESH_CACHE_BYTES",
        512 * 1024 * 1024,
        "Memory for decoded meshes kept between renders.",
    )
    """Estimated memory, in bytes, of the decoded meshes (arrays and texture pixels) a render
    process keeps between renders and exports of the same scenes (0: none)."""
    texture_cache_bytes: int = _env_field(
        "KILN_RENDER_TEXTURE_CACHE_BYTES",
        256 * 1024 * 1024,
        "GL memory for textures kept uploaded between renders.",
    )
    """Estimated GL memory, in bytes, of the textures (with their mipmaps) a render process
    keeps uploaded between renders of the same decoded meshes (0: upload every render). On
    llvmpipe this is ordinary process memory."""
    gl_backend: str = _env_field(
        "KILN_RENDER_GL_BACKEND", "egl", "moderngl's context backend for rendering."
    )
    """The moderngl context backend: `egl` (headless: Mesa llvmpipe on the CPU, or the GPU
    driver's EGL where one is installed)."""


TRACING_EXPORTERS = ("off", "otlp", "console", "file")


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry tracing of every process (off by default; docs/observability.md)."""

    exporter: str = _env_field(
        "KILN_TRACING",
        "off",
        "Where spans go: off, otlp (OTEL_EXPORTER_OTLP_* apply), console, or file.",
    )
    """Where spans go: `off` (no tracing, no cost), `otlp` (OTLP over gRPC, configured by the
    standard `OTEL_EXPORTER_OTLP_*` variables, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`),
    `console` (a JSON span per line on stderr) or `file` (JSON lines appended to
    KILN_TRACING_FILE)."""
    file: str = _env_field(
        "KILN_TRACING_FILE",
        "",
        "JSON-lines file of the file exporter (default: <data dir>/traces.jsonl).",
    )
    """File the `file` exporter appends spans to, one JSON object per line; processes may
    share it (default `<data dir>/traces.jsonl`)."""


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one gRPC service process."""

    name: str
    """Which service this is: objects, jobs, render or archive."""
    host: str
    """Address the gRPC and metrics ports bind to."""
    grpc_port: int
    """gRPC port (KILN_<SERVICE>_PORT); 0 picks a free one."""
    metrics_port: int
    """Prometheus /metrics port (KILN_<SERVICE>_METRICS_PORT); 0 picks a free one, -1 disables."""
    database_url: str
    """SQLAlchemy async URL (KILN_<SERVICE>_DATABASE_URL); default a SQLite file in the data dir."""
    data_dir: Path
    """Directory for embedded state (SQLite files, keys)."""
    storage: StorageConfig
    """S3 settings."""
    auth: AuthConfig
    """Token verification settings."""
    log_level: str
    """Python logging level name."""
    log_format: str
    """`json` (default) or `text`."""
    shutdown_grace_seconds: float
    """On SIGTERM, how long in-flight calls may run before they are cancelled."""
    jobs_target: str
    """host:port of the jobs service, for services that submit or run jobs."""
    objects_target: str
    """host:port of the objects service, for services that read assets or objects."""
    jobs: JobsConfig = field(default_factory=JobsConfig)
    """The jobs service's retry, lease-expiry and retention settings."""
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    """Settings of the job workers inside render and archive."""
    imaging: ImagingConfig = field(default_factory=ImagingConfig)
    """Image editing's limits and fetching rules (render)."""
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    """Scene import and render budgets (render)."""
    tracing: TracingConfig = field(default_factory=TracingConfig)
    """OpenTelemetry tracing."""
    objects_subscriber_queue: int = 1024
    """Events queued per live subscriber before it is dropped (KILN_OBJECTS_SUBSCRIBER_QUEUE)."""
    objects_udp_port: int = -1
    """CLyman's UDP Events port (KILN_OBJECTS_UDP_PORT); -1 off, 0 a free port."""
    objects_udp_host: str = ""
    """Address the UDP port binds to (KILN_OBJECTS_UDP_HOST); empty: the service's host."""
    objects_udp_tenant: str = ""
    """Tenant every UDP datagram acts on (KILN_OBJECTS_UDP_TENANT); UDP has no credentials."""
    objects_udp_aes_key: str = ""
    """AES-256 key, 64 hex digits, when datagrams are encrypted (KILN_OBJECTS_UDP_AES_KEY)."""
    objects_udp_aes_iv: str = ""
    """AES-CBC IV, 32 hex digits (KILN_OBJECTS_UDP_AES_IV)."""


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of the HTTP/JSON gateway process."""

    host: str
    """Address the HTTP port binds to (KILN_GATEWAY_HOST)."""
    port: int
    """HTTP port (KILN_GATEWAY_PORT, default 8080); /metrics is served on it too."""
    database_url: str
    """SQLAlchemy async URL of the API-client store (KILN_GATEWAY_DATABASE_URL)."""
    data_dir: Path
    """Directory for embedded state."""
    descriptor_set: Path
    """Compiled descriptor set the routes are built from (KILN_DESCRIPTOR_SET)."""
    targets: Mapping[str, str]
    """Service name -> host:port (KILN_<SERVICE>_TARGET)."""
    auth: AuthConfig
    """Token signing settings."""
    demo_client_id: str
    """client_id of the demo API client created at start (KILN_DEMO_CLIENT_ID; empty: none)."""
    demo_client_secret: str
    """Its secret (KILN_DEMO_CLIENT_SECRET)."""
    demo_tenant: str
    """Its tenant (KILN_DEMO_TENANT)."""
    max_body_bytes: int
    """Largest JSON body accepted (KILN_MAX_BODY_BYTES); larger answers 413."""
    max_upload_bytes: int
    """Largest file a multipart upload may carry (KILN_MAX_UPLOAD_BYTES); larger answers 413."""
    call_timeout_seconds: float
    """Deadline of each upstream unary gRPC call (KILN_GATEWAY_CALL_TIMEOUT_SECONDS)."""
    shutdown_grace_seconds: float
    """On SIGTERM, how long in-flight requests may run (KILN_SHUTDOWN_GRACE_SECONDS)."""
    log_level: str
    """Python logging level name."""
    log_format: str
    """`json` or `text`."""
    clyman_anonymous_tenant: str = ""
    """Tenant a CLyman request without credentials acts as (KILN_CLYMAN_ANONYMOUS_TENANT);
    empty: CLyman's routes require credentials like every other."""
    rate_limit_per_second: float = 0.0
    """Default sustained requests per second of one API client in one gateway replica
    (KILN_RATE_LIMIT_PER_SECOND; 0: no limit). A client's own limit replaces it."""
    rate_limit_burst: int = 0
    """Default burst (requests at once) of one API client (KILN_RATE_LIMIT_BURST)."""
    tracing: TracingConfig = field(default_factory=TracingConfig)
    """OpenTelemetry tracing."""


# Variables outside the dataclasses above whose names are built per service, documented here so
# the generated configuration page lists them too.
PER_SERVICE_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("KILN_<SERVICE>_PORT", "50051..50054", "gRPC port of objects, jobs, render, archive."),
    ("KILN_<SERVICE>_METRICS_PORT", "9101..9104", "Prometheus /metrics port of each service."),
    (
        "KILN_<SERVICE>_DATABASE_URL",
        "sqlite+aiosqlite:///<data dir>/<service>.db",
        "Database of each service; postgresql+asyncpg://… in production.",
    ),
    ("KILN_<SERVICE>_TARGET", "127.0.0.1:<port>", "Where other processes reach each service."),
)
GENERAL_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("KILN_HOST", "127.0.0.1", "Bind address of every service."),
    ("KILN_DATA_DIR", "./var", "Embedded state: SQLite files, S3 data, keys, logs."),
    ("KILN_LOG_LEVEL", "INFO", "Logging level."),
    ("KILN_LOG_FORMAT", "json", "json or text."),
    ("KILN_SHUTDOWN_GRACE_SECONDS", "10", "Grace period for in-flight calls on SIGTERM."),
    ("KILN_GATEWAY_HOST", "127.0.0.1", "Bind address of the gateway."),
    ("KILN_GATEWAY_PORT", "8080", "HTTP port of the gateway."),
    (
        "KILN_GATEWAY_DATABASE_URL",
        "sqlite+aiosqlite:///<data dir>/gateway.db",
        "API-client store of the gateway.",
    ),
    ("KILN_DESCRIPTOR_SET", "gen/kiln.binpb", "Descriptor set the gateway builds routes from."),
    (
        "KILN_RATE_LIMIT_PER_SECOND",
        "0 (off)",
        "Default requests per second of one API client, per gateway replica.",
    ),
    (
        "KILN_RATE_LIMIT_BURST",
        "the rate, rounded up",
        "Default burst of one API client (requests at once).",
    ),
    ("KILN_MAX_BODY_BYTES", "8388608", "Largest JSON body the gateway accepts."),
    ("KILN_MAX_UPLOAD_BYTES", "5368709120", "Largest file a multipart upload may carry."),
    (
        "KILN_GATEWAY_CALL_TIMEOUT_SECONDS",
        "30",
        "Deadline of each gRPC call the gateway makes for a unary route.",
    ),
    ("KILN_DEMO_CLIENT_ID", "demo", "Demo API client created at start; empty for none."),
    ("KILN_DEMO_CLIENT_SECRET", "demo-secret", "Secret of the demo client."),
    ("KILN_DEMO_TENANT", "demo", "Tenant of the demo client."),
    ("KILN_S3_PORT", "9000", "Port of the embedded S3 server that `make up` starts."),
    (
        "KILN_CLYMAN_ANONYMOUS_TENANT",
        "",
        "Tenant that CLyman requests (/v1/object…, /v1/property…, the object event stream) "
        "without an Authorization header act as, since CLyman's documented clients send none; "
        "credentials that are sent are still checked. Empty: credentials required. `make up` "
        "sets the demo tenant unless the variable is set; production leaves it empty.",
    ),
    (
        "KILN_OBJECTS_SUBSCRIBER_QUEUE",
        "1024",
        "Object events queued per live subscriber (Subscribe, SSE); a subscriber whose queue "
        "overflows is dropped with RESOURCE_EXHAUSTED and must resubscribe.",
    ),
    (
        "KILN_OBJECTS_UDP_PORT",
        "-1",
        "CLyman's UDP Events API port of the objects service (CLyman used 8762); -1 off, "
        "0 a free port. UDP carries no credentials: expose it only to trusted devices.",
    ),
    ("KILN_OBJECTS_UDP_HOST", "", "Bind address of the UDP port; empty: KILN_HOST."),
    (
        "KILN_OBJECTS_UDP_TENANT",
        "",
        "Tenant every UDP datagram acts on; required when the UDP port is on.",
    ),
    (
        "KILN_OBJECTS_UDP_AES_KEY",
        "",
        "64 hex digits: datagrams are base64 of AES-256-CBC ciphertext under this key; "
        "empty: plain JSON.",
    ),
    (
        "KILN_OBJECTS_UDP_AES_IV",
        "",
        "32 hex digits: the AES-CBC IV, with KILN_OBJECTS_UDP_AES_KEY.",
    ),
)


class _Env:
    """Typed reads from one environment mapping, with errors that name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, var: str, default: str) -> str:
        return self._environ.get(var, default)

    def integer(self, var: str, default: int) -> int:
        raw = self._environ.get(var)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{var} must be an integer, got {raw!r}") from None

    def number(self, var: str, default: float) -> float:
        raw = self._environ.get(var)
        if raw is None or raw == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{var} must be a number, got {raw!r}") from None

    def flag(self, var: str, default: bool) -> bool:
        raw = self._environ.get(var)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{var} must be true or false, got {raw!r}")

    def section(self, cls: type[Any], **overrides: Any) -> Any:
        """Fills a dataclass whose fields carry `env` metadata."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = f.metadata["env"]
            if isinstance(f.default, bool):
                values[f.name] = self.flag(var, f.default)
            elif isinstance(f.default, float):
                values[f.name] = self.number(var, f.default)
            elif isinstance(f.default, int):
                values[f.name] = self.integer(var, f.default)
            else:
                values[f.name] = self.text(var, str(f.default))
        values.update(overrides)
        return cls(**values)


def _data_dir(env: _Env) -> Path:
    return Path(env.text("KILN_DATA_DIR", "./var")).resolve()


def _auth(env: _Env, data_dir: Path) -> AuthConfig:
    auth: AuthConfig = env.section(AuthConfig)
    keys = data_dir / "keys"
    return dataclasses.replace(
        auth,
        private_key_file=auth.private_key_file or str(keys / "jwt.pem"),
        public_key_files=auth.public_key_files or str(keys / "jwt.pub.pem"),
    )


def _target(env: _Env, service: str) -> str:
    port = env.integer(f"KILN_{service.upper()}_PORT", SERVICE_PORTS[service][0])
    return env.text(f"KILN_{service.upper()}_TARGET", f"127.0.0.1:{port}")


def _validate_log(env: _Env) -> tuple[str, str]:
    level = env.text("KILN_LOG_LEVEL", "INFO").upper()
    fmt = env.text("KILN_LOG_FORMAT", "json").lower()
    if fmt not in {"json", "text"}:
        raise ConfigError(f"KILN_LOG_FORMAT must be json or text, got {fmt!r}")
    return level, fmt


def load_service_config(name: str, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Reads one service's configuration; raises ConfigError naming any bad variable."""
    if name not in SERVICE_PORTS:
        raise ConfigError(f"unknown service {name!r}; expected one of {', '.join(SERVICE_NAMES)}")
    env = _Env(os.environ if environ is None else environ)
    data_dir = _data_dir(env)
    grpc_default, metrics_default = SERVICE_PORTS[name]
    prefix = f"KILN_{name.upper()}"
    storage: StorageConfig = env.section(StorageConfig)
    if storage.part_size < 5 * 1024 * 1024:
        raise ConfigError("KILN_S3_PART_SIZE must be at least 5 MiB (5242880), S3's minimum")
    if not 1 <= storage.presign_expiry_seconds <= 7 * 24 * 3600:
        raise ConfigError("KILN_PRESIGN_EXPIRY_SECONDS must be between 1 and 604800 (7 days)")
    level, fmt = _validate_log(env)
    udp_port = env.integer("KILN_OBJECTS_UDP_PORT", -1)
    udp_tenant = env.text("KILN_OBJECTS_UDP_TENANT", "")
    subscriber_queue = env.integer("KILN_OBJECTS_SUBSCRIBER_QUEUE", 1024)
    aes_key = env.text("KILN_OBJECTS_UDP_AES_KEY", "")
    aes_iv = env.text("KILN_OBJECTS_UDP_AES_IV", "")
    if name == "objects":
        _validate_objects(subscriber_queue, udp_port, udp_tenant, aes_key, aes_iv)
    jobs: JobsConfig = env.section(JobsConfig)
    _validate_jobs(jobs)
    worker: WorkerConfig = env.section(WorkerConfig)
    worker = dataclasses.replace(
        worker, token_file=worker.token_file or str(data_dir / "keys" / "worker.token")
    )
    _validate_worker(worker)
    imaging: ImagingConfig = env.section(ImagingConfig)
    _validate_imaging(imaging)
    scenes: ScenesConfig = env.section(ScenesConfig)
    _validate_scenes(scenes)
    return ServiceConfig(
        name=name,
        host=env.text("KILN_HOST", "127.0.0.1"),
        grpc_port=env.integer(f"{prefix}_PORT", grpc_default),
        metrics_port=env.integer(f"{prefix}_METRICS_PORT", metrics_default),
        database_url=env.text(
            f"{prefix}_DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / (name + '.db')}"
        ),
        data_dir=data_dir,
        storage=storage,
        auth=_auth(env, data_dir),
        log_level=level,
        log_format=fmt,
        shutdown_grace_seconds=env.number("KILN_SHUTDOWN_GRACE_SECONDS", 10.0),
        jobs_target=_target(env, "jobs"),
        objects_target=_target(env, "objects"),
        objects_subscriber_queue=subscriber_queue,
        objects_udp_port=udp_port,
        objects_udp_host=env.text("KILN_OBJECTS_UDP_HOST", ""),
        objects_udp_tenant=udp_tenant,
        objects_udp_aes_key=aes_key,
        objects_udp_aes_iv=aes_iv,
        jobs=jobs,
        worker=worker,
        imaging=imaging,
        scenes=scenes,
        tracing=_tracing(env, data_dir),
    )


def _tracing(env: _Env, data_dir: Path) -> TracingConfig:
    tracing: TracingConfig = env.section(TracingConfig)
    exporter = tracing.exporter.strip().lower()
    if exporter not in TRACING_EXPORTERS:
        raise ConfigError(f"KILN_TRACING must be one of {', '.join(TRACING_EXPORTERS)}")
    return dataclasses.replace(
        tracing, exporter=exporter, file=tracing.file or str(data_dir / "traces.jsonl")
    )


def _validate_scenes(scenes: ScenesConfig) -> None:
    for name, value in (
        ("KILN_SCENE_MAX_IMPORT_BYTES", scenes.max_import_bytes),
        ("KILN_SCENE_MAX_IMPORT_FILES", scenes.max_import_files),
        ("KILN_SCENE_MAX_TRIANGLES", scenes.max_triangles),
        ("KILN_SCENE_IMPORT_SECONDS", scenes.import_seconds),
        ("KILN_SCENE_IMPORT_MEMORY_BYTES", scenes.import_memory_bytes),
        ("KILN_RENDER_MAX_PIXELS", scenes.max_render_pixels),
    ):
        if value <= 0:
            raise ConfigError(f"{name} must be > 0")
    if scenes.mesh_cache_bytes < 0:
        raise ConfigError("KILN_RENDER_MESH_CACHE_BYTES must be >= 0")
    if scenes.texture_cache_bytes < 0:
        raise ConfigError("KILN_RENDER_TEXTURE_CACHE_BYTES must be >= 0")
    if scenes.gl_backend not in {"egl", "x11"}:
        raise ConfigError("KILN_RENDER_GL_BACKEND must be egl or x11")


def _validate_imaging(imaging: ImagingConfig) -> None:
    if imaging.max_input_megapixels <= 0 or imaging.max_output_megapixels <= 0:
        raise ConfigError(
            "KILN_IMAGE_MAX_INPUT_MEGAPIXELS and KILN_IMAGE_MAX_OUTPUT_MEGAPIXELS must be > 0"
        )
    if imaging.fetch_max_bytes < 1 or imaging.fetch_timeout_seconds <= 0:
        raise ConfigError("KILN_FETCH_MAX_BYTES and KILN_FETCH_TIMEOUT_SECONDS must be > 0")
    if not 1 <= imaging.tmp_url_seconds <= 7 * 24 * 3600:
        raise ConfigError("KILN_IMAGE_TMP_URL_SECONDS must be between 1 and 604800 (7 days)")
    if imaging.threads < 1:
        raise ConfigError("KILN_IMAGE_THREADS must be at least 1")


def _validate_jobs(jobs: JobsConfig) -> None:
    if jobs.max_attempts < 1:
        raise ConfigError("KILN_JOBS_MAX_ATTEMPTS must be at least 1")
    if jobs.backoff_seconds < 0 or jobs.backoff_max_seconds < jobs.backoff_seconds:
        raise ConfigError(
            "KILN_JOBS_BACKOFF_SECONDS must be >= 0 and at most KILN_JOBS_BACKOFF_MAX_SECONDS"
        )
    if jobs.retention_seconds < 0:
        raise ConfigError("KILN_JOBS_RETENTION_SECONDS must be >= 0")
    if jobs.reap_interval_seconds <= 0:
        raise ConfigError("KILN_JOBS_REAP_INTERVAL_SECONDS must be > 0")
    jobs.tenant_caps()


def _validate_worker(worker: WorkerConfig) -> None:
    if worker.concurrency < 1:
        raise ConfigError("KILN_WORKER_CONCURRENCY must be at least 1")
    if worker.lease_seconds <= 0 or not 0 < worker.heartbeat_seconds < worker.lease_seconds / 2:
        # Under half the lease, one late heartbeat never costs a healthy worker its job.
        raise ConfigError(
            "KILN_WORKER_HEARTBEAT_SECONDS must be > 0 and under half of KILN_WORKER_LEASE_SECONDS"
        )


def _validate_objects(queue: int, udp_port: int, tenant: str, aes_key: str, aes_iv: str) -> None:
    if queue < 1:
        raise ConfigError("KILN_OBJECTS_SUBSCRIBER_QUEUE must be at least 1")
    if not -1 <= udp_port <= 65535:
        raise ConfigError("KILN_OBJECTS_UDP_PORT must be -1 (off), 0 (any) or a port number")
    if udp_port >= 0 and not tenant:
        # UDP carries no credentials, so the tenant cannot come from the caller.
        raise ConfigError("KILN_OBJECTS_UDP_TENANT is required when KILN_OBJECTS_UDP_PORT is on")
    for var, value, digits in (
        ("KILN_OBJECTS_UDP_AES_KEY", aes_key, 64),
        ("KILN_OBJECTS_UDP_AES_IV", aes_iv, 32),
    ):
        if value and (
            len(value) != digits or any(c not in "0123456789abcdefABCDEF" for c in value)
        ):
            raise ConfigError(f"{var} must be {digits} hex digits")
    if bool(aes_key) != bool(aes_iv):
        raise ConfigError("KILN_OBJECTS_UDP_AES_KEY and KILN_OBJECTS_UDP_AES_IV go together")


def load_gateway_config(environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Reads the gateway's configuration; raises ConfigError naming any bad variable."""
    env = _Env(os.environ if environ is None else environ)
    data_dir = _data_dir(env)
    level, fmt = _validate_log(env)
    rate = env.number("KILN_RATE_LIMIT_PER_SECOND", 0.0)
    burst = env.integer("KILN_RATE_LIMIT_BURST", max(1, math.ceil(rate)) if rate > 0 else 0)
    if rate < 0 or burst < 0 or (rate > 0 and burst < 1):
        raise ConfigError(
            "KILN_RATE_LIMIT_PER_SECOND must be >= 0 (0: off) and KILN_RATE_LIMIT_BURST >= 1"
        )
    return GatewayConfig(
        host=env.text("KILN_GATEWAY_HOST", "127.0.0.1"),
        port=env.integer("KILN_GATEWAY_PORT", 8080),
        database_url=env.text(
            "KILN_GATEWAY_DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}"
        ),
        data_dir=data_dir,
        descriptor_set=Path(env.text("KILN_DESCRIPTOR_SET", "gen/kiln.binpb")).resolve(),
        targets={service: _target(env, service) for service in SERVICE_NAMES},
        auth=_auth(env, data_dir),
        demo_client_id=env.text("KILN_DEMO_CLIENT_ID", "demo"),
        demo_client_secret=env.text("KILN_DEMO_CLIENT_SECRET", "demo-secret"),
        demo_tenant=env.text("KILN_DEMO_TENANT", "demo"),
        max_body_bytes=env.integer("KILN_MAX_BODY_BYTES", 8 * 1024 * 1024),
        max_upload_bytes=env.integer("KILN_MAX_UPLOAD_BYTES", 5 * 1024**3),
        call_timeout_seconds=env.number("KILN_GATEWAY_CALL_TIMEOUT_SECONDS", 30.0),
        shutdown_grace_seconds=env.number("KILN_SHUTDOWN_GRACE_SECONDS", 10.0),
        log_level=level,
        log_format=fmt,
        clyman_anonymous_tenant=env.text("KILN_CLYMAN_ANONYMOUS_TENANT", "").strip(),
        rate_limit_per_second=rate,
        rate_limit_burst=burst,
        tracing=_tracing(env, data_dir),
    )
