from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from components.prompts.render import ItemCatalog
from components.traces import AnalystStats, training_interactions

from .fakes import make_catalog, make_examples, make_interactions

SERVER_SCRIPT = Path(__file__).with_name("fake_openai_server.py")


@pytest.fixture
def catalog() -> ItemCatalog:
    return make_catalog()


@pytest.fixture
def interactions() -> pd.DataFrame:
    return make_interactions()


@pytest.fixture
def examples(interactions: pd.DataFrame) -> pd.DataFrame:
    return make_examples(interactions)


@pytest.fixture
def stats(interactions: pd.DataFrame, catalog: ItemCatalog) -> AnalystStats:
    return AnalystStats.fit(training_interactions(interactions), catalog)


@pytest.fixture
def openai_server(tmp_path: Path) -> Iterator:
    """Start the scripted server process: ``start(replies) -> (base_url, read_log)``."""
    processes: list[subprocess.Popen] = []

    def start(replies: list[tuple[int, str]]) -> tuple[str, object]:
        script = tmp_path / f"script{len(processes)}.json"
        log = tmp_path / f"requests{len(processes)}.jsonl"
        script.write_text(json.dumps([{"status": status, "body": body} for status, body in replies]))
        process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), str(script), str(log)], stdout=subprocess.PIPE, text=True
        )
        processes.append(process)
        port = int(process.stdout.readline())

        def read_log() -> list[dict]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        return f"http://127.0.0.1:{port}/v1", read_log

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)
