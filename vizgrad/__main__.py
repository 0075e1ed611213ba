"""``python -m vizgrad``: the same command line as ``vizgrad``."""

from __future__ import annotations

from vizgrad.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
