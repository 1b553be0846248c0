"""docs/configuration.md is generated from config.py; these tests keep the two in step."""

from __future__ import annotations

import re
from pathlib import Path

from deploy.local import configdoc
from services.runtime.config import SERVICE_NAMES

REPO = Path(__file__).resolve().parents[2]
# Code that reads settings; tests and benchmarks have their own knobs (KILN_TEST_PG_HOST, …).
SCANNED = ("services", "gateway", "deploy")
VARIABLE = re.compile(r"\bKILN_[A-Z0-9_]*[A-Z0-9]\b")


def test_committed_page_matches_the_generator() -> None:
    committed = configdoc.PAGE.read_text() if configdoc.PAGE.exists() else ""
    assert committed == configdoc.render(), (
        "docs/configuration.md is stale: run `make docs-config` and commit the result"
    )


def test_every_variable_in_the_code_is_documented() -> None:
    documented = set(configdoc.variables())
    prefixes = {f"KILN_{name.upper()}_": "KILN_<SERVICE>_" for name in SERVICE_NAMES}
    undocumented: dict[str, str] = {}
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            for name in VARIABLE.findall(path.read_text(errors="replace")):
                generic = name
                for prefix, placeholder in prefixes.items():
                    if name.startswith(prefix):
                        generic = placeholder + name[len(prefix) :]
                # Objects-only variables (KILN_OBJECTS_UDP_PORT) are documented by their name.
                if generic not in documented and name not in documented:
                    undocumented.setdefault(name, str(path.relative_to(REPO)))
    assert not undocumented, (
        "variables read in code but not declared in services/runtime/config.py "
        f"(so missing from docs/configuration.md): {undocumented}"
    )
