"""The prose docs name real things: every setting, make target, command and link they mention
exists in the code, so a page cannot drift from what it documents without a red test."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from deploy.local import configdoc
from gateway.admin import parser as clients_parser
from services.runtime.config import SERVICE_NAMES

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
VARIABLE = re.compile(r"\bKILN_[A-Z0-9_<>]*[A-Z0-9>]\b")
MAKE = re.compile(r"\bmake ([a-z][a-z0-9-]*)")
MODULE = re.compile(r"python -m ([a-z_][a-z0-9_.]*[a-z0-9_])")
CLIENTS = re.compile(r"\bkiln clients ([a-z]+)")
ENTRYPOINT = re.compile(r"deploy\.docker\.entrypoint ([a-z-]+)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# Variables of the tests and benchmarks themselves, which the configuration page leaves out.
OWN_KNOBS = re.compile(r"KILN_(TEST|BENCH)_")


def page_ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in pages]


def documented_variables() -> set[str]:
    names = set(configdoc.variables())
    for generic in [n for n in names if n.startswith("KILN_<SERVICE>_")]:
        suffix = generic.removeprefix("KILN_<SERVICE>_")
        names |= {f"KILN_{service.upper()}_{suffix}" for service in SERVICE_NAMES}
    return names


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.MULTILINE))


def clients_actions() -> set[str]:
    root = clients_parser()
    groups = next(a for a in root._actions if a.dest == "group")
    clients = groups.choices["clients"]  # type: ignore[index]
    actions = next(a for a in clients._actions if a.dest == "action")
    return set(actions.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_setting_named_is_a_real_one(page: Path) -> None:
    known = documented_variables()
    named = {v for v in VARIABLE.findall(page.read_text()) if not OWN_KNOBS.match(v)}
    assert named <= known, f"{page.name} names settings config.py lacks: {sorted(named - known)}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_command_named_exists(page: Path) -> None:
    text = page.read_text()
    missing = [f"make {t}" for t in MAKE.findall(text) if t not in makefile_targets()]
    missing += [
        f"python -m {m}" for m in MODULE.findall(text) if importlib.util.find_spec(m) is None
    ]
    missing += [f"kiln clients {a}" for a in CLIENTS.findall(text) if a not in clients_actions()]
    if ENTRYPOINT.search(text):
        from deploy.docker import entrypoint

        commands = set(entrypoint.COMMANDS) | set(entrypoint.PROCESSES)
        missing += [f"entrypoint {c}" for c in ENTRYPOINT.findall(text) if c not in commands]
    assert not missing, f"{page.name} documents commands that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [
        target
        for target in LINK.findall(page.read_text())
        if "://" not in target
        and not target.startswith("mailto:")
        and not (page.parent / target).exists()
    ]
    assert not broken, f"{page.name} links to files that do not exist: {broken}"


def test_the_checks_see_what_they_check() -> None:
    """Each pattern finds its kind of reference in the operations page, so a regex that stopped
    matching cannot pass every page vacuously."""
    text = (REPO / "docs" / "operations.md").read_text()
    assert "KILN_JWT_PUBLIC_KEY_FILES" in VARIABLE.findall(text)
    assert "down" in MAKE.findall(text)
    assert "services.runtime.db" in MODULE.findall(text)
    assert {"create", "disable", "delete", "list"} <= set(CLIENTS.findall(text))
    assert {"keys", "worker-token", "migrate"} <= set(ENTRYPOINT.findall(text))
    assert "configuration.md" in LINK.findall(text)
    assert "KILN_NOT_A_SETTING" not in documented_variables()
    assert "not-a-target" not in makefile_targets()
