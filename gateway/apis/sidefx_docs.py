"""The README's table of SideFX RPC functions, generated from the registry:
`python -m gateway.apis.sidefx_docs --write` (`make docs-config`), `--check` (`make lint`)."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.responses import Response

from gateway.apis.sidefx_registry import REGISTRY, type_name

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- sidefx-functions:begin -->", "<!-- sidefx-functions:end -->"


def _parameter(param: inspect.Parameter, hints: Mapping[str, Any]) -> str:
    hint = type_name(hints.get(param.name, Any)).replace("|", "or")
    if param.kind is inspect.Parameter.VAR_KEYWORD:
        return f"**{param.name}: {hint}"
    if param.default is inspect.Parameter.empty:
        return f"{param.name}: {hint}"
    return f"{param.name}: {hint} = {param.default!r}"


def table() -> str:
    """The README's table of functions, from the registry."""
    lines = ["| function | arguments | what it does |", "| --- | --- | --- |"]
    for name in sorted(REGISTRY):
        function = REGISTRY[name]
        params = ", ".join(
            _parameter(p, function.hints) for p in function.signature.parameters.values()
        )
        returns = function.hints.get("return")
        binary = " Binary result." if returns is Response else ""
        lines.append(f"| `{name}` | `{params}` | {function.summary}{binary} |")
    return "\n".join(lines)


def readme_block() -> str:
    return f"{BEGIN}\n{table()}\n{END}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the README's table of SideFX RPC functions")
    parser.add_argument("--write", action="store_true", help="rewrite it in README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md is stale")
    args = parser.parse_args(argv)
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} … {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    fresh = head + readme_block() + tail
    if args.write:
        README.write_text(fresh)
        return 0
    if args.check:
        if fresh != text:
            print("README.md's SideFX function table is stale: make docs-config", file=sys.stderr)
            return 1
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
