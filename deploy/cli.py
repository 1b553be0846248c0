"""The `kiln` command's entry point: puts the generated protobuf package (`gen/`, made by
`make protos`) on the import path, then runs the command. (The gateway package imports the
generated code as it loads, so the entry point cannot live inside it.)"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

GEN = Path(__file__).resolve().parents[1] / "gen"


def main(argv: Sequence[str] | None = None) -> int:
    if GEN.is_dir() and str(GEN) not in sys.path:
        sys.path.insert(0, str(GEN))
    from gateway.admin import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
