"""The local service stack (infra/local/stack-*.sh): S3, MLflow and Prefect servers, for real.

Each test brings a stack up on free ports in a DGR2_HOME of its own and always takes it down.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.conftest import REPO_ROOT
from tests.integration.conftest import PORT_VARIABLES, S3Server, _free_ports

pytestmark = pytest.mark.integration

LOCAL = REPO_ROOT / "infra" / "local"
SERVERS = ("s3", "mlflow", "prefect")
POSTGRES_URL = os.environ.get("DGR2_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Logs one artifact in a run, as a client that sourced the env file does, but without S3 keys:
# the server proxies artifacts, so only it needs them.
LOG_ARTIFACT = """
import mlflow
with mlflow.start_run() as run:
    mlflow.log_text("hello from the stack test", "notes/hello.txt")
print(run.info.run_id)
"""


class Stack:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.env_file = home / "stack" / "stack.env"
        self.s3 = S3Server(
            endpoint=f"http://127.0.0.1:{env['DGR2_S3_PORT']}",
            access_key=env["DGR2_S3_ACCESS_KEY"],
            secret_key=env["DGR2_S3_SECRET_KEY"],
        )

    def run(self, script: str, timeout: float = 240, **settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LOCAL / script],
            env={**self.env, **settings},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def up(self) -> dict[str, str]:
        """stack-up.sh, which must succeed; what it printed, name -> URL or path."""
        up = self.run("stack-up.sh")
        assert up.returncode == 0, up.stderr
        return dict(line.split() for line in up.stdout.splitlines())

    def status(self) -> tuple[int, dict[str, list[str]]]:
        """stack-status.sh's exit status and its lines, split into words, by server."""
        status = self.run("stack-status.sh", timeout=30)
        lines = [line.split() for line in status.stdout.splitlines()]
        return status.returncode, {words[0]: words[1:] for words in lines if words[0] in SERVERS}

    def exports(self) -> dict[str, str]:
        """The env file's variables, as a shell that sources it sees them."""
        shown = subprocess.run(
            ["bash", "-c", f"set -a; source {shlex.quote(str(self.env_file))}; env -0"],
            env={"PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=True,
        )
        variables = dict(item.split("=", 1) for item in shown.stdout.split("\0") if "=" in item)
        return {name: variables[name] for name in variables if name.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}

    def log_artifact(self) -> str:
        """Runs LOG_ARTIFACT in a fresh interpreter that has sourced the env file; the run id."""
        script = (
            f"source {shlex.quote(str(self.env_file))}; "
            'unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; exec "$0" -c "$1"'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING"))}
        done = subprocess.run(
            ["bash", "-c", script, sys.executable, LOG_ARTIFACT],
            env={**env, "HOME": str(self.home)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[-1]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Builds stacks on free ports in tmp DGR2_HOMEs; stops every one of them at the end."""
    stacks: list[Stack] = []

    def make(**settings: str) -> Stack:
        home = tmp_path / f"dgr2-home-{len(stacks)}"
        *s3_ports, mlflow_port, prefect_port = _free_ports(len(PORT_VARIABLES) + 2)
        env = {
            # The developer's own stack settings stay out.
            **{name: value for name, value in os.environ.items() if not name.startswith("DGR2_")},
            **dict(zip(PORT_VARIABLES, map(str, s3_ports))),
            "DGR2_MLFLOW_PORT": str(mlflow_port),
            "DGR2_PREFECT_PORT": str(prefect_port),
            "DGR2_HOME": str(home),
            "DGR2_S3_ACCESS_KEY": "dgr2-stack-test-key",
            "DGR2_S3_SECRET_KEY": "dgr2-stack-test-secret",
            # The state is thrown away: no point waiting long for graceful stops.
            "DGR2_S3_STOP_TIMEOUT": "5",
            "DGR2_STACK_STOP_TIMEOUT": "10",
            # mlflow, prefect, weed and python live next to the interpreter running the tests.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **settings,
        }
        stacks.append(Stack(home, env))
        return stacks[-1]

    yield make
    failed = [down.stderr for down in (stack.run("stack-down.sh", timeout=120) for stack in stacks) if down.returncode]
    assert not failed, failed


def _live_groups(groups: set[int]) -> set[int]:
    """Those of the process groups that still have a member that is not a zombie."""
    listing = subprocess.run(["ps", "-e", "-o", "pgid=,stat="], capture_output=True, text=True, check=True)
    return {
        int(pgid) for pgid, stat in (line.split() for line in listing.stdout.splitlines()) if not stat.startswith("Z")
    } & groups


def _get(url: str | urllib.request.Request) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _assert_stopped(stack: Stack, pids: set[int]) -> None:
    code, servers = stack.status()
    assert code == 3
    assert {name: words[0] for name, words in servers.items()} == dict.fromkeys(SERVERS, "down")
    assert not stack.env_file.exists()
    assert not _live_groups(pids)


def test_local_stack_up_status_use_down(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    env = stack.env
    urls = {
        "s3": stack.s3.endpoint,
        "mlflow": f"http://127.0.0.1:{env['DGR2_MLFLOW_PORT']}",
        "prefect": f"http://127.0.0.1:{env['DGR2_PREFECT_PORT']}",
    }

    assert stack.up() == {**urls, "env": str(stack.env_file)}

    code, servers = stack.status()
    assert code == 0
    assert {name: words[:2] for name, words in servers.items()} == {name: ["up", url] for name, url in urls.items()}
    pids = {int(words[3]) for words in servers.values()}
    # Idempotent: a second run finds every server and starts none.
    assert stack.up() == {**urls, "env": str(stack.env_file)}
    assert {int(words[3]) for words in stack.status()[1].values()} == pids

    assert stack.exports() == {
        "MLFLOW_TRACKING_URI": urls["mlflow"],
        "PREFECT_API_URL": f"{urls['prefect']}/api",
        "AWS_ENDPOINT_URL": urls["s3"],
        "AWS_ACCESS_KEY_ID": stack.s3.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert stack.env_file.stat().st_mode & 0o777 == 0o600

    assert _get(f"{urls['mlflow']}/health") == b"OK"
    run_id = stack.log_artifact()
    objects = stack.s3.client().list_objects_v2(Bucket="mlflow", Prefix="artifacts/").get("Contents", [])
    keys = [obj["Key"] for obj in objects if obj["Key"].endswith(f"/{run_id}/artifacts/notes/hello.txt")]
    assert len(keys) == 1, objects
    body = stack.s3.client().get_object(Bucket="mlflow", Key=keys[0])["Body"].read()
    assert body == b"hello from the stack test"

    assert _get(f"{urls['prefect']}/api/health") == b"true"
    request = urllib.request.Request(f"{urls['prefect']}/api/flows/filter", data=b"{}", method="POST")
    request.add_header("Content-Type", "application/json")
    assert _get(request) == b"[]"

    down = stack.run("stack-down.sh", timeout=120)
    assert down.returncode == 0, down.stderr
    _assert_stopped(stack, pids)
    again = stack.run("stack-down.sh", timeout=60)
    assert again.returncode == 0, again.stderr


def test_a_server_that_does_not_start_stops_the_stack(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(DGR2_PREFECT_START_TIMEOUT="1")

    up = stack.run("stack-up.sh")

    assert up.returncode != 0
    assert up.stdout == ""
    log = stack.home / "stack" / "logs" / "prefect.log"
    assert f"prefect not healthy after 1 s (log above, full log in {log})" in up.stderr
    stopped = [line for line in up.stderr.splitlines() if " stopped (pid " in line]
    pids = {int(line.rsplit(" ", 1)[1].rstrip(")")) for line in stopped}
    assert len(pids) == 3, up.stderr
    _assert_stopped(stack, pids)


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """Two databases of this test's own (created by stack-up.sh), dropped at the end."""
    suffix = uuid.uuid4().hex[:10]
    names = {"mlflow": f"dgr2_test_mlflow_{suffix}", "prefect": f"dgr2_test_prefect_{suffix}"}
    server = make_url(POSTGRES_URL)

    def url(driver: str, database: str) -> str:
        return server.set(drivername=driver, database=database).render_as_string(hide_password=False)

    yield {
        "DGR2_MLFLOW_BACKEND_URI": url("postgresql+psycopg", names["mlflow"]),
        # Prefect's server needs an async driver.
        "DGR2_PREFECT_DATABASE_URL": url("postgresql+asyncpg", names["prefect"]),
    }
    with psycopg.connect(_libpq(POSTGRES_URL), autocommit=True) as conn:
        for name in names.values():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_production_profile_keeps_mlflow_and_prefect_in_postgres(
    databases: dict[str, str], make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(DGR2_STACK_PROFILE="production", **databases)
    stack.up()
    assert stack.status()[0] == 0
    # A running stack is not passed off as one of the other profile.
    local = stack.run("stack-up.sh", timeout=30, DGR2_STACK_PROFILE="local")
    assert local.returncode == 1
    assert "runs the production profile: stop it first (make stack-down)" in local.stderr

    run_id = stack.log_artifact()

    with psycopg.connect(_libpq(databases["DGR2_MLFLOW_BACKEND_URI"])) as conn:
        runs = conn.execute("SELECT run_uuid, artifact_uri FROM runs").fetchall()
    assert [run for run, _ in runs] == [run_id]
    assert runs[0][1].startswith("mlflow-artifacts:/")
    with psycopg.connect(_libpq(databases["DGR2_PREFECT_DATABASE_URL"])) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"flow", "flow_run", "task_run", "alembic_version"} <= tables
    assert not (stack.home / "stack" / "mlflow" / "mlflow.db").exists()
    assert not (stack.home / "stack" / "prefect" / "prefect.db").exists()
