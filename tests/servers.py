"""Servers a test runs on 127.0.0.1 (``bentoml serve``, ``mlflow server``): started on a free port,
waited for until ready, and stopped with every process they started."""

from __future__ import annotations

import socket
import subprocess
import sys
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen

    def kill(self) -> None:
        """SIGKILL to the server and every process it started: BentoML's workers run in their own
        sessions, so the server's process group alone would leave them serving."""
        import psutil

        try:
            family = [*psutil.Process(self.process.pid).children(recursive=True), psutil.Process(self.process.pid)]
        except psutil.NoSuchProcess:
            return
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait()


@contextmanager
def served(
    command: list[str], ready_path: str, env: dict[str, str], workdir: Path, port: int | None = None, log_name: str = "serve.log"
) -> Iterator[Server]:
    """The server ``command`` (given ``--host`` and ``--port``) running while the block runs, once
    ``ready_path`` answers 200; its output goes to ``workdir/log_name``. Stopped with SIGTERM, and
    killed with everything it started if that does not stop it."""
    log_path = workdir / log_name
    port = port or free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        server = Server(url, process)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                assert process.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT_S} s: " + log_path.read_text()[-3000:]
                time.sleep(1)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            server.kill()


def served_bento(bento_tag: str, env: dict[str, str], workdir: Path, python: str = sys.executable) -> AbstractContextManager[Server]:
    """``bentoml serve`` of a built Bento. ``python``: the interpreter (and so the environment) that serves it."""
    return served([python, "-m", "bentoml", "serve", bento_tag], "/readyz", env, workdir)
