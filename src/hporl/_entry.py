"""The ``hporl`` console script: loads :mod:`hporl.cli` under a Ctrl-C guard, so that an
interrupt while the command starts ends as any other ("hporl: aborted", exit 130), not with
an import traceback. ``hporl`` itself imports nothing heavy until a name is used."""

from __future__ import annotations

import sys
from typing import Any


def main() -> Any:
    try:
        from hporl.cli import main as cli_main
    except KeyboardInterrupt:
        print("hporl: aborted", file=sys.stderr)
        sys.exit(130)
    return cli_main()
