"""``python -m cli``: the ``dgr2`` command line."""

from cli.main import app

app()
