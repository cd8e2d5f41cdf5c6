from pathlib import Path

import pytest

from components.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_profiles_load_and_hold_only_deltas():
    tiny = load_config(REPO / "configs" / "tiny.yaml")
    small = load_config(REPO / "configs" / "small.yaml")
    assert tiny.profile == "tiny" and small.profile == "small"
    assert small.prompts.include_title and not tiny.prompts.include_title


def test_overrides_take_yaml_types():
    cfg = load_config(None, ["candidates.num_candidates=20", "prompts.include_title=true", "candidates.negatives=hard"])
    assert cfg.candidates.num_candidates == 20
    assert cfg.prompts.include_title is True
    assert cfg.candidates.negatives == "hard"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("candidates.num_candidates=ten", "candidates.num_candidates"),
        ("candidates.negatives=random", "candidates.negatives"),
        ("candidates.nmu_candidates=3", "candidates.nmu_candidates"),
        ("validation.min_title_coverage=1.5", "validation.min_title_coverage"),
        ("nosection.key=1", "nosection"),
    ],
)
def test_bad_override_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_override_syntax_and_files_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["candidates.num_candidates"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("candidates: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cross_field_check():
    with pytest.raises(ConfigError, match="pre_ranker_window"):
        load_config(None, ["candidates.history_max=2", "candidates.pre_ranker_window=3"])


def test_slice_hash_changes_only_with_its_sections():
    base = load_config(None)
    other_section = load_config(None, ["prompts.include_title=true"])
    same_section = load_config(None, ["candidates.seed=7"])
    assert base.slice_hash("candidates") == other_section.slice_hash("candidates")
    assert base.slice_hash("candidates") != same_section.slice_hash("candidates")


def test_a_slice_can_name_single_fields():
    base = load_config(None)
    other_field = load_config(None, ["evaluation.max_test_examples=50"])
    same_field = load_config(None, ["evaluation.seed=3"])
    assert base.config_slice("evaluation.seed", "prompts") == {"evaluation.seed": 0, "prompts": base.prompts.model_dump(mode="json")}
    assert base.slice_hash("evaluation.seed") == other_field.slice_hash("evaluation.seed")
    assert base.slice_hash("evaluation.seed") != same_field.slice_hash("evaluation.seed")
    with pytest.raises(KeyError, match="evaluation.no_such_field"):
        base.slice_hash("evaluation.no_such_field")


def test_how_many_users_are_scored_does_not_invalidate_the_data():
    from components.candidates.build import CANDIDATES_STAGE

    inputs = {"dataset": "d", "sids": "s"}
    base = CANDIDATES_STAGE.output_uri(load_config(None), inputs)
    assert CANDIDATES_STAGE.output_uri(load_config(None, ["evaluation.max_test_examples=50", "evaluation.valid_examples=0"]), inputs) == base
    # The floors' bootstrap CIs do depend on the evaluation seed.
    assert CANDIDATES_STAGE.output_uri(load_config(None, ["evaluation.seed=3"]), inputs) != base


def test_a_stage_overrides_only_what_it_sets_of_the_shared_training_section():
    cfg = load_config(None, ["training.learning_rate=0.001", "training.batch_size=8", "sft.max_steps=7", "rl.learning_rate=1e-5"])
    sft = cfg.sft.training(cfg.training)
    assert (sft.max_steps, sft.learning_rate, sft.batch_size) == (7, 0.001, 8)
    rl = cfg.rl.training(cfg.training)
    assert (rl.max_steps, rl.learning_rate) == (cfg.training.max_steps, 1e-5)


def test_reasoning_weight_must_stay_below_the_answer_weight():
    with pytest.raises(ConfigError, match="lambda_reasoning"):
        load_config(None, ["sft.lambda_reasoning=1.0"])
