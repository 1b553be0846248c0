"""deploy/observability against the real thing: the rules and the dashboard parse and name only
metrics that the launched suite's processes export, and one request moves the metrics the
dashboard draws (gateway per route, SQL, S3, the queue gauges, job outcomes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.runtime.config import (
    SERVICE_NAMES,
    SERVICE_PORTS,
    TracingConfig,
    load_gateway_config,
    load_service_config,
)
from services.runtime.errors import ConfigError
from tests.e2e.conftest import REPO, START_TIMEOUT, launch, make_layout
from tests.observability import promql

pytestmark = pytest.mark.timeout(120)

OBSERVABILITY = REPO / "deploy" / "observability"
K8S_BASE = REPO / "deploy" / "k8s" / "base"
SEVERITIES = {"warning", "critical"}
#: A job kind no worker serves: it stays queued, so the queue gauges must show it.
UNSERVED_KIND = "obs.unserved"


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    return loaded


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query, the template variables' included."""
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            # label_values(metric, label) is Grafana's, not PromQL: its metric is what counts.
            assert query.startswith("label_values(") and query.endswith(")"), query
            metric, _, label = query[len("label_values(") : -1].partition(",")
            assert label.strip(), query
            found.append((f"variable {variable['name']}", metric.strip()))
    return found


# --- the files on their own ----------------------------------------------------------------


def test_alert_rules_parse_and_are_complete() -> None:
    document = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    assert [group["name"] for group in document["groups"]], "no rule groups"
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert promql.check(rule["expr"]) == [], (rule["alert"], promql.check(rule["expr"]))
        assert promql.check(f"x[{rule['for']}]") == [], rule["for"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    # The four the operators asked for, each on the metric that measures it.
    by_metric = {
        name: promql.metric_names(rule["expr"]) for name, rule in zip(names, rules, strict=True)
    }
    assert "kiln_jobs_oldest_queued_age_seconds" in by_metric["KilnJobQueueBacklog"]
    assert "kiln_jobs_finished_total" in by_metric["KilnJobFailureRate"]
    assert "grpc_server_handling_seconds_bucket" in by_metric["KilnRpcLatencyHigh"]
    assert "http_requests_total" in by_metric["KilnGatewayErrorRate"]


def test_the_checker_catches_mistakes() -> None:
    assert promql.check('sum(rate(a_total{x="y"}[5m]))') == []
    assert promql.check("sum(rate(a_total[5m])") == ["unclosed '('"]
    assert promql.check("rate(a_total[5 minutes])") == ["bad duration [5 minutes]"]
    assert promql.check("rates(a_total[5m])") == ["unknown function rates"]
    assert promql.check('a_total{x="y" z}') == ["bad label matcher 'x=\"\" z'"]
    assert promql.metric_names(
        'sum by (kind) (rate(a_total{k=~"b|c"}[5m])) / on (kind) b_bucket > 1e-3'
    ) == {"a_total", "b_bucket"}


def test_prometheus_config_scrapes_what_kubernetes_and_make_up_expose() -> None:
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"kiln-pods", "kiln-local"}

    pods = jobs["kiln-pods"]
    assert pods["kubernetes_sd_configs"][0]["role"] == "pod"
    relabels = pods["relabel_configs"]
    sources = {tuple(r.get("source_labels", ())) for r in relabels}
    annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
    for name in ("scrape", "path"):
        assert (annotation + name,) in sources, name
    assert any(r.get("target_label") == annotation + "port" for r in relabels)
    # The pods carry the annotations this job reads, on a port they declare (it keeps the
    # one container port the annotation names).
    annotated = 0
    for manifest in sorted(K8S_BASE.glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            template = doc["spec"]["template"]
            notes = template["metadata"].get("annotations", {})
            if notes.get("prometheus.io/scrape") != "true":
                continue
            annotated += 1
            declared = {
                str(port["containerPort"])
                for container in template["spec"]["containers"]
                for port in container.get("ports", [])
            }
            assert notes["prometheus.io/port"] in declared, manifest.name
            assert notes["prometheus.io/path"].startswith("/"), manifest.name
    assert annotated >= len(SERVICE_NAMES) + 1, "the services and the gateway are annotated"

    # make up's default ports: every service's metrics port and the gateway.
    local = {
        target: group["labels"]["service"]
        for group in jobs["kiln-local"]["static_configs"]
        for target in group["targets"]
    }
    expected = {f"127.0.0.1:{SERVICE_PORTS[n][1]}": n for n in SERVICE_NAMES}
    expected["127.0.0.1:8080"] = "gateway"
    assert local == expected


def test_dashboard_is_importable_and_its_queries_are_plausible() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    graphs = [panel for panel in board["panels"] if panel["type"] != "row"]
    for panel in graphs:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert promql.check(target["expr"]) == [], (panel["title"], target["expr"])
            for name in promql.metric_names(target["expr"]):
                # Dashboard variables stand only for label values.
                assert "$" not in name, (panel["title"], name)
    # A panel for each thing the dashboard is for.
    text = json.dumps(board)
    for metric in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "kiln_jobs_unfinished",
        "kiln_jobs_oldest_queued_age_seconds",
        "kiln_jobs_finished_total",
        "kiln_worker_handler_seconds_bucket",
        "kiln_s3_operation_seconds_bucket",
        "kiln_sql_query_seconds_bucket",
    ):
        assert metric in text, metric


# --- against a launched suite ----------------------------------------------------------------


@dataclass
class Scrape:
    """One /metrics answer, parsed."""

    types: dict[str, str]
    samples: list[tuple[str, dict[str, str], float]]

    @property
    def sample_names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def labels(self, name: str, label: str) -> set[str]:
        return {labels[label] for sample, labels, _ in self.samples if sample == name}


def parse(text: str) -> Scrape:
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        samples.extend((s.name, dict(s.labels), s.value) for s in family.samples)
    # The parser drops the _total of a counter's family name; the exposition's TYPE line has it.
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return Scrape(types, samples)


@dataclass
class Suite:
    env: dict[str, str]
    data_dir: Path
    gateway: str
    metrics_urls: dict[str, str]
    grpc_targets: dict[str, str]
    traces: Path

    def scrape(self, process: str) -> Scrape:
        answer = httpx.get(self.metrics_urls[process], timeout=10)
        assert answer.status_code == 200, (process, answer.status_code)
        assert answer.headers["content-type"].startswith("text/plain"), process
        return parse(answer.text)

    def scrape_all(self) -> dict[str, Scrape]:
        return {process: self.scrape(process) for process in self.metrics_urls}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """The whole suite as `make up` runs it (six processes), on free ports, every process
    tracing into one JSON-lines file."""
    root = tmp_path_factory.mktemp("observability")
    traces = root / "traces.jsonl"
    layout = make_layout(
        root / "var",
        KILN_LOG_LEVEL="WARNING",
        # The queue gauges are sampled every 5 rounds: once a second here.
        KILN_JOBS_REAP_INTERVAL_SECONDS="0.2",
        KILN_TRACING="file",
        KILN_TRACING_FILE=str(traces),
    )
    env, data_dir = layout.env, layout.data_dir
    metrics_urls = {"gateway": f"{layout.gateway}/metrics"}
    metrics_urls |= {
        name: f"http://127.0.0.1:{port}/metrics" for name, port in layout.metrics_ports.items()
    }
    grpc_targets = {name: f"127.0.0.1:{port}" for name, port in layout.grpc_ports.items()}
    up = launch(env, "--detach", timeout=START_TIMEOUT + 40)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield Suite(env, data_dir, layout.gateway, metrics_urls, grpc_targets, traces)
    finally:
        launch(env, "--stop", timeout=60)


def test_every_metric_the_rules_and_dashboard_name_is_exported(suite: Suite) -> None:
    scrapes = suite.scrape_all()
    assert set(scrapes) == {"gateway", *SERVICE_NAMES}
    for process, scrape in scrapes.items():
        # Each process has its RED metrics and its SQL or S3 timing before any request.
        red = "http_requests_total" if process == "gateway" else "grpc_server_handled_total"
        assert red in scrape.types, process
        assert scrape.types.get("kiln_sql_query_seconds") == "histogram" or process in {
            "render",
            "archive",
        }, process
    types = {name: kind for scrape in scrapes.values() for name, kind in scrape.types.items()}
    samples = {name for scrape in scrapes.values() for name in scrape.sample_names}
    referenced = [
        (f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()
    ] + dashboard_exprs()
    missing = {
        (where, name)
        for where, expr in referenced
        for name in promql.metric_names(expr)
        if name not in promql.SYNTHETIC and not promql.exported(name, types, samples)
    }
    assert not missing, sorted(missing)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def archive_one_asset(suite: Suite, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """Uploads an asset and archives it through the gateway (an archive.create job the archive
    service's worker runs), `headers` on the archive request; answers (token, job id)."""
    with httpx.Client(base_url=suite.gateway, timeout=30) as http:
        token = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, auth=("demo", "demo-secret")
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        upload = http.post("/v1/assets", headers=auth, files={"file": ("p.obj", b"v 0 0 0\n")})
        assert upload.status_code == 200, upload.text
        asset = upload.json()["asset"]["id"]
        created = http.post(
            "/v1/assets/archive",
            headers={**auth, **(headers or {})},
            json={"query": {"assetIds": [asset]}, "options": {"flat": True}},
        )
        assert created.status_code == 200, created.text
        job_id = str(created.json()["job"]["jobId"])
        wait_for(
            lambda: (
                http.get(f"/v1/jobs/{job_id}", headers=auth).json()["job"]["status"] == "success"
            ),
            "the archive job",
        )
    return token, job_id


def test_one_archive_moves_route_sql_s3_queue_and_job_metrics(suite: Suite) -> None:
    before = suite.scrape_all()
    token, job_id = archive_one_asset(suite)

    # A job no worker runs stays queued: the queue gauges show its kind, and its age grows.
    with grpc.insecure_channel(suite.grpc_targets["jobs"]) as channel:
        jobs_pb2_grpc.JobServiceStub(channel).CreateJob(
            jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(kind=UNSERVED_KIND)),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )

    def queued() -> Scrape | None:
        scrape = suite.scrape("jobs")
        age = scrape.value("kiln_jobs_oldest_queued_age_seconds", kind=UNSERVED_KIND)
        depth = scrape.value("kiln_jobs_unfinished", kind=UNSERVED_KIND, status="queued")
        return scrape if depth == 1 and age > 0 else None

    jobs_scrape = wait_for(queued, "the queue gauges of the unserved kind")
    after = suite.scrape_all()
    after["jobs"] = jobs_scrape

    def moved(process: str, name: str, **labels: str) -> float:
        return after[process].value(name, **labels) - before[process].value(name, **labels)

    # The gateway counts by route template, never by raw path.
    assert moved("gateway", "http_requests_total", route="/v1/assets", method="POST") == 1
    assert moved("gateway", "http_requests_total", route="/v1/jobs/{jobId}", status="200") >= 1
    routes = after["gateway"].labels("http_requests_total", "route")
    assert not any(job_id in route for route in routes), routes
    assert moved("gateway", "http_request_duration_seconds_count", route="/v1/assets/archive")
    assert moved("gateway", "kiln_sql_query_seconds_count", verb="SELECT") >= 1
    # objects stored the asset: an S3 put and SQL inserts.
    assert moved("objects", "kiln_s3_operation_seconds_count", operation="put_object") >= 1
    assert moved("objects", "kiln_s3_bytes_total", direction="written") >= len(b"v 0 0 0\n")
    assert moved("objects", "kiln_sql_query_seconds_count", verb="INSERT") >= 1
    # jobs created and finished it; archive read the asset and wrote the ZIP.
    assert moved("jobs", "kiln_jobs_created_total", kind="archive.create") == 1
    assert moved("jobs", "kiln_jobs_finished_total", kind="archive.create", status="succeeded")
    assert moved("jobs", "kiln_sql_query_seconds_count") >= 3
    assert moved("archive", "grpc_server_handled_total", grpc_method="CreateArchive") == 1
    assert moved(
        "archive", "kiln_worker_jobs_finished_total", kind="archive.create", outcome="succeeded"
    )
    assert moved("archive", "kiln_worker_handler_seconds_count", kind="archive.create") == 1
    assert moved("archive", "kiln_s3_operation_seconds_count", operation="get_object") >= 1
    assert moved("archive", "kiln_s3_operation_seconds_count", operation="put_object") >= 1
    assert moved("archive", "kiln_archive_output_bytes_total") > 0
    # Latency histograms: every observed call lands in a bucket.
    assert after["archive"].value(
        "kiln_s3_operation_seconds_bucket", operation="put_object", le="+Inf"
    ) == after["archive"].value("kiln_s3_operation_seconds_count", operation="put_object")


# --- tracing -------------------------------------------------------------------------------


def spans(suite: Suite) -> list[dict[str, Any]]:
    if not suite.traces.exists():
        return []
    return [json.loads(line) for line in suite.traces.read_text().splitlines() if line]


def test_one_request_is_one_trace_from_gateway_through_services_to_the_worker(
    suite: Suite,
) -> None:
    # The client's own trace context: everything the request causes must join it.
    trace_id = os.urandom(16).hex()
    client_span = os.urandom(8).hex()
    _, job_id = archive_one_asset(suite, {"traceparent": f"00-{trace_id}-{client_span}-01"})

    def traced_job() -> list[dict[str, Any]] | None:
        found = [s for s in spans(suite) if s["context"]["trace_id"] == f"0x{trace_id}"]
        done = any(s["attributes"].get("kiln.job.id") == job_id for s in found)
        return found if done else None

    trace = wait_for(traced_job, "the worker's span of the archive job", timeout=10)
    by_name = {(s["resource"]["attributes"]["service.name"], s["name"]): s for s in trace}
    gateway = by_name[("kiln-gateway", "POST /v1/assets/archive")]
    assert gateway["kind"] == "SpanKind.SERVER"
    assert gateway["parent_id"] == f"0x{client_span}"
    assert gateway["attributes"]["http.response.status_code"] == 200
    create_archive = by_name[("kiln-archive", "kiln.archive.v1.ArchiveService/CreateArchive")]
    create_job = by_name[("kiln-jobs", "kiln.jobs.v1.JobService/CreateJob")]
    worker = by_name[("kiln-archive", "job archive.create")]
    assert worker["kind"] == "SpanKind.CONSUMER"
    assert worker["attributes"]["kiln.job.outcome"] == "succeeded"
    # Parent links, not only a shared id: gateway → archive → jobs through the client spans,
    # and the worker's span is the child of the call that created its job.
    ids = {s["context"]["span_id"]: s for s in trace}

    def ancestors(span: dict[str, Any]) -> list[str]:
        chain = []
        while span["parent_id"] in ids:
            span = ids[span["parent_id"]]
            chain.append(span["name"])
        return chain

    assert gateway["name"] in ancestors(create_archive)
    assert create_archive["name"] in ancestors(create_job)
    assert worker["parent_id"] == create_job["context"]["span_id"]
    # The worker's report to the jobs service joins the trace too.
    assert any(
        s["name"].startswith("kiln.jobs.v1.WorkerService/Complete")
        and s["resource"]["attributes"]["service.name"] == "kiln-jobs"
        for s in trace
    ), sorted(by_name)


def test_tracing_is_off_by_default_and_then_costs_nothing() -> None:
    # A fresh interpreter: what importing every entry point does on its own.
    probe = (
        "import sys\n"
        "import gateway.app, services.jobs.main, services.render.main, services.archive.main\n"
        "from services.runtime import config, tracing\n"
        "assert config.load_service_config('jobs', {}).tracing.exporter == 'off'\n"
        "assert not tracing.configure('jobs', config.load_service_config('jobs', {}).tracing)\n"
        "assert tracing.server_interceptors() == [] and tracing.client_interceptors() is None\n"
        "assert tracing.current_traceparent() == ''\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    ran = run_probe(probe)
    assert ran.stdout.strip() == "[]", "OpenTelemetry was imported with tracing off"


def test_tracing_settings_are_checked() -> None:
    traced = load_service_config("jobs", {"KILN_TRACING": " File ", "KILN_DATA_DIR": "/srv/k"})
    assert traced.tracing == TracingConfig(exporter="file", file="/srv/k/traces.jsonl")
    assert load_gateway_config({"KILN_TRACING": "otlp"}).tracing.exporter == "otlp"
    with pytest.raises(ConfigError, match="KILN_TRACING must be one of off, otlp"):
        load_service_config("jobs", {"KILN_TRACING": "zipkin"})


# --- the jobs table keeps the trace context; SQL timing on both databases ---------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_jobs_trace_context_survives_create_and_lease_and_sql_is_timed(
    database_url: str,
) -> None:
    from prometheus_client import REGISTRY

    from services.jobs.jobs import JobQueue
    from services.jobs.main import MIGRATIONS
    from services.jobs.pg_hot_path import PgHotPath
    from services.jobs.signals import Signals
    from services.runtime import db
    from services.runtime.config import JobsConfig

    def statements(verb: str) -> float:
        return REGISTRY.get_sample_value("kiln_sql_query_seconds_count", {"verb": verb}) or 0.0

    before = {verb: statements(verb) for verb in ("SELECT", "INSERT", "WITH")}
    async with db.migrated_engine(database_url, "jobs", MIGRATIONS) as engine:
        dsn = db.postgres_dsn(database_url)
        # On PostgreSQL the service creates and claims through the raw asyncpg hot path.
        hot_path = None if dsn is None else await PgHotPath.connect(dsn, max_size=2)
        signals = Signals()
        await signals.start(dsn, None if hot_path is None else hot_path.notify_batch)
        queue = JobQueue(engine, signals, JobsConfig(), hot_path=hot_path)
        try:
            created = await queue.create("t", kind="obs.trace", params={}, traceparent=TRACEPARENT)
            untraced = await queue.create("t", kind="obs.trace", params={})
            too_long = await queue.create("t", kind="obs.trace", params={}, traceparent="x" * 65)
            assert created.traceparent == TRACEPARENT
            assert untraced.traceparent == too_long.traceparent == ""
            leased, _ = await queue.lease(
                kinds=["obs.trace"], max_jobs=3, lease_seconds=30, wait_seconds=1, worker="w"
            )
            assert {r.id: r.traceparent for r in leased} == {
                created.id: TRACEPARENT,
                untraced.id: "",
                too_long.id: "",
            }
        finally:
            await queue.close()
            await signals.close()
    assert statements("SELECT") > before["SELECT"]
    # SQLite inserts through SQLAlchemy; PostgreSQL's hot path sends one WITH … INSERT.
    written = "WITH" if dsn is not None else "INSERT"
    assert statements(written) > before[written]


def test_the_otlp_exporter_delivers_spans_to_a_collector() -> None:
    """KILN_TRACING=otlp, the production setting, against a real OTLP/gRPC endpoint (a
    TraceService in this process; the traced process is a child, so this one stays untraced)."""
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[Any] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        probe = (
            "from services.runtime import config, tracing\n"
            "assert tracing.configure('jobs', config.load_service_config('jobs').tracing)\n"
            "with tracing.tracer().start_as_current_span('probe'):\n"
            "    assert tracing.current_traceparent().startswith('00-')\n"
            "tracing.shutdown()\n"
        )
        run_probe(
            probe,
            KILN_TRACING="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_SERVICE_NAME="probe-service",
        )
    finally:
        server.stop(0)
    spans = [
        (resource.resource, span.name)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [name for _, name in spans] == ["probe"]
    attributes = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert attributes["service.name"] == "probe-service"


def run_probe(probe: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """Runs `probe` in a fresh interpreter with only `settings` of the KILN_* / OTEL_* kind
    (nothing imported or configured by this test process leaks in); it must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "OTEL_"))}
    env.update(PYTHONPATH=f"{REPO / 'gen'}{os.pathsep}{REPO}", **settings)
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert ran.returncode == 0, ran.stderr
    return ran
