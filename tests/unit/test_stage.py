import pytest

from components.config import load_config
from components.stage import StageSpec, code_version

SPEC = StageSpec("candidates", ("candidates",), ("components/candidates",))


def test_output_uri_follows_inputs_config_slice_and_root(tmp_path):
    cfg = load_config(None, [f"storage.artifact_root={tmp_path}"])
    uri = SPEC.output_uri(cfg, {"dataset": "a"})
    assert uri.startswith(str(tmp_path / "candidates"))
    assert SPEC.output_uri(cfg, {"dataset": "a"}) == uri
    assert SPEC.output_uri(cfg, {"dataset": "b"}) != uri
    changed = load_config(None, [f"storage.artifact_root={tmp_path}", "candidates.seed=1"])
    assert SPEC.output_uri(changed, {"dataset": "a"}) != uri
    unrelated = load_config(None, [f"storage.artifact_root={tmp_path}", "prompts.include_title=true"])
    assert SPEC.output_uri(unrelated, {"dataset": "a"}) == uri
    on_s3 = load_config(None, ["storage.artifact_root=s3://bucket/prefix"])
    assert SPEC.output_uri(on_s3, {"dataset": "a"}).startswith("s3://bucket/prefix/candidates/")


def test_code_version_reads_modules_and_packages():
    assert code_version("components/data/ingest") != code_version("components/data/events")
    assert code_version("components/data") != code_version("components/data/ingest")
    with pytest.raises(ValueError, match="no Python source"):
        code_version("components/nothing_here")


def test_a_published_stage_output_is_found_again_with_its_metrics(tmp_path):
    from components.stage import cached_result, publishing

    uri = str(tmp_path / "artifacts" / "stage" / "key")
    assert cached_result(uri, "out_uri", tmp_path / "work") is None
    metrics = {"rows": 3}
    with publishing(uri, tmp_path / "work", metrics) as out:
        (out / "table.txt").write_text("a")
        metrics["extra"] = 1.5  # added inside the block: still published
    again = cached_result(uri, "out_uri", tmp_path / "work")
    assert again is not None and again.cached and again.outputs == {"out_uri": uri}
    assert again.metrics == {"rows": 3, "extra": 1.5}


def test_a_failed_stage_publishes_nothing(tmp_path):
    from components.stage import cached_result, publishing

    uri = str(tmp_path / "artifacts" / "stage" / "key")
    with pytest.raises(RuntimeError):
        with publishing(uri, tmp_path / "work", {}) as out:
            (out / "half.txt").write_text("a")
            raise RuntimeError("boom")
    assert cached_result(uri, "out_uri", tmp_path / "work") is None
