"""``bentoml serve`` of a built Bento on 127.0.0.1 for a test: started, waited for until ready, and
stopped with its whole process group (BentoML forks workers)."""

from __future__ import annotations

import socket
import subprocess
import sys
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class BentoServer:
    url: str
    process: subprocess.Popen

    def kill(self) -> None:
        """SIGKILL to the server and every worker it started: BentoML's workers run in their own
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
def served_bento(bento_tag: str, env: dict[str, str], workdir: Path, python: str = sys.executable) -> Iterator[BentoServer]:
    """The running server while the block runs; its output goes to ``workdir/serve.log``.
    ``python``: the interpreter (and so the environment) that serves it."""
    log_path = workdir / "serve.log"
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [python, "-m", "bentoml", "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        server = BentoServer(url, process)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                assert process.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT_S} s: " + log_path.read_text()[-3000:]
                time.sleep(1)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # BentoML stops its workers, then itself
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
