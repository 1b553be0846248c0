"""Prometheus collectors of the worker library.

They live apart from `services.runtime.worker` because `python -m services.runtime.worker`
loads that module a second time (as `__main__`), and a collector registered twice in the
default registry is an error. The default registry is the one every service's `/metrics` port
serves, so workers inside render and archive appear there without any wiring.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_STARTED = Counter(
    "kiln_worker_jobs_started_total",
    "Jobs whose handler this worker started, by kind.",
    ["kind"],
)
JOBS_FINISHED = Counter(
    "kiln_worker_jobs_finished_total",
    "Handler runs that ended, by kind and outcome: succeeded, failed (not retryable), "
    "retried (failed, retryable), canceled, lease_lost, released (shutdown).",
    ["kind", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "kiln_worker_handler_seconds",
    "Time from a handler's start to its end, by kind.",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
JOBS_RUNNING = Gauge(
    "kiln_worker_jobs_running",
    "Jobs this process is running now, by kind.",
    ["kind"],
)
LEASE_ERRORS = Counter(
    "kiln_worker_lease_errors_total",
    "LeaseJobs calls that failed (the jobs service unreachable or refusing), by gRPC code.",
    ["code"],
)
