from __future__ import annotations

import pytest

from components.prompts import ItemCatalog

from .fakes import fake_catalog


@pytest.fixture
def catalog() -> ItemCatalog:
    return fake_catalog()
