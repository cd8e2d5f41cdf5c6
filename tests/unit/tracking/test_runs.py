"""What counts as the tracking store being unavailable: retried by tasks, one clear line from the CLI."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from components.tracking.runs import tracking_unavailable


@pytest.mark.parametrize("code", ["INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"])
def test_a_server_that_gave_up_is_unavailable(code: str) -> None:
    error = MlflowException("API request to http://127.0.0.1:5000 failed", error_code=getattr(databricks_pb2, code))
    assert tracking_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        MlflowException("Registered Model with name=gr2-ar not found", error_code=databricks_pb2.RESOURCE_DOES_NOT_EXIST),
        MlflowException("bad filter", error_code=databricks_pb2.INVALID_PARAMETER_VALUE),
        ConnectionError("not MLflow's"),
    ],
)
def test_a_refusal_or_another_error_is_not(error: Exception) -> None:
    assert not tracking_unavailable(error)
