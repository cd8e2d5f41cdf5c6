"""Create the Postgres databases that SQLAlchemy URLs name, where missing (stack-up.sh's
production profile: MLflow and Prefect each get a database of their own).

Usage: python pg-ensure-db.py URL [URL ...]
Connects as each URL's user to the server's `postgres` database; a URL's driver
(postgresql+psycopg, postgresql+asyncpg, ...) does not matter, psycopg does the work.
"""

from __future__ import annotations

import sys

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def ensure_database(text: str) -> None:
    url = make_url(text)
    if url.get_backend_name() != "postgresql" or not url.database:
        raise SystemExit(f"pg-ensure-db: not a Postgres URL with a database: {url!r}")
    params = {"host": url.host, "port": url.port, "user": url.username, "password": url.password}
    try:
        with psycopg.connect(
            dbname="postgres", autocommit=True, connect_timeout=10, **{k: v for k, v in params.items() if v}
        ) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
                return
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
    except psycopg.Error as exc:
        raise SystemExit(f"pg-ensure-db: {url!r}: {exc}".strip()) from None
    print(f"pg-ensure-db: created database {url.database}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for argument in sys.argv[1:]:
        ensure_database(argument)
