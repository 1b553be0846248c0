"""The `kiln` command's entry point: `kiln clients …` (operators: the gateway's client store,
`gateway.admin`) or a user command on the public API (`kiln_sdk.cli`). For the operator
commands it puts the generated protobuf package (`gen/`, made by `make protos`) on the import
path first: the gateway package imports it as it loads."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

GEN = Path(__file__).resolve().parents[1] / "gen"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] != ["clients"]:
        from kiln_sdk.cli import main as user_command

        return user_command(arguments)
    if GEN.is_dir() and str(GEN) not in sys.path:
        sys.path.insert(0, str(GEN))
    from gateway.admin import main as run

    return run(arguments)


if __name__ == "__main__":
    sys.exit(main())
