"""``python -m mixopt.cli``: the ``mixopt`` command."""

from __future__ import annotations

from mixopt.cli import app

if __name__ == "__main__":
    app()
