"""One config schema for every stage.

Profiles in ``configs/<profile>.yaml`` hold only the values that differ from the defaults below;
``--set section.key=value`` overrides are applied on top. Unknown keys are rejected, so a typo
fails loudly instead of silently running with a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Section):
    # Local directory or s3://bucket/prefix. boto3 takes endpoint, keys and region from the
    # environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
    artifact_root: str = ".dgr2/artifacts"
    # Local scratch space: downloads from S3, Data Docs, Feast stores.
    work_dir: str = ".dgr2/work"


class DataConfig(_Section):
    # A directory (local or s3://) holding either the bundled layout
    # (interactions.tsv.gz + items.jsonl[.gz]) or Amazon review JSON lines (reviews + metadata).
    source_uri: str = "data/amazon-beauty"
    format: Literal["auto", "bundled", "amazon-json"] = "auto"
    # File names inside source_uri for the amazon-json format (gzip optional).
    reviews_file: str = "reviews.json.gz"
    metadata_file: str = "meta.json.gz"
    # The item catalogue's name, recorded on every registered version: a model trained on one
    # catalogue never replaces a champion that serves another. Empty: the source directory's name.
    catalog: str = ""

    @property
    def catalog_name(self) -> str:
        """``catalog``, or the last component of ``source_uri`` (``amazon-beauty``)."""
        return self.catalog or self.source_uri.rstrip("/").rsplit("/", 1)[-1]


class ValidationConfig(_Section):
    # 5-core data: every user has at least 5 interactions (McAuley 2014 5-core filter).
    min_interactions_per_user: int = Field(5, ge=1)
    # Share of items that must carry a non-empty title; Beauty has 99.94%.
    min_title_coverage: float = Field(0.99, ge=0.0, le=1.0)


class SemanticIdConfig(_Section):
    # Text embedding + residual k-means (GR2 section 2.3: RQ with k-means init), then one more
    # level that makes IDs unique by assigning distinct codes inside each collision group.
    quantized_levels: int = Field(3, ge=1, le=6)
    codebook_size: int = Field(256, ge=2)
    # Size of the uniqueness level; must exceed the longest collision chain.
    last_level_size: int = Field(256, ge=2)
    kmeans_iterations: int = Field(50, ge=1)
    # Texts are sorted by length before batching; smaller batches pad less (the 12,101 Beauty
    # items: 106 s at 32 against 114 s at 128 on 2 cores, bit-identical embeddings).
    encode_batch_size: int = Field(32, ge=1)
    seed: int = 0


class CandidatesConfig(_Section):
    num_candidates: int = Field(10, ge=2)
    # Most recent history items kept per example (H).
    history_max: int = Field(20, ge=1)
    # Train examples per user, taken from the latest train positions backwards.
    train_examples_per_user: int = Field(2, ge=0)
    # uniform: items the user never interacted with, as in the papers' regime;
    # popularity: sampled proportional to popularity; hard: the pre-ranker's own top scorers.
    negatives: Literal["uniform", "popularity", "hard"] = "uniform"
    # Users are split into folds; the pre-ranker for a user's examples is fitted on the other
    # folds only, so it never saw that example's target interaction.
    pre_ranker_folds: int = Field(5, ge=2)
    # How many of the latest history items vote in the transition pre-ranker, with recency decay.
    # 1 (last item only) gives a floor close to the papers' (test R@1 0.334 vs 0.2811; a window of
    # 3 gives 0.361, leaving the re-ranker less headroom).
    pre_ranker_window: int = Field(1, ge=1)
    pre_ranker_decay: float = Field(0.5, gt=0.0, le=1.0)
    # What orders each list: "transition" (above), or "sasrec", a SASRec model (the ``sasrec``
    # section's settings) trained per fold the same way, which makes the floor SASRec's. Negatives
    # are drawn as before either way ("hard" ones from the transition model's top scorers).
    pre_ranker: Literal["transition", "sasrec"] = "transition"
    # The paper's test sample size (Diffusion-GR2: 1,615 Beauty test users).
    test_sample_size: int = Field(1615, ge=1)
    seed: int = 0


class PromptConfig(_Section):
    # Titles make prompts long; the CPU profile shows SID + category only.
    include_title: bool = False
    max_title_chars: int = Field(60, ge=8)
    # The brand is a few tokens and the strongest re-ranking signal a prompt can show without titles:
    # on all valid users the analyst ranking by shared brand alone scores R@1 0.430 against the
    # pre-ranker's 0.366, by shared category alone 0.364 (benchmarks/results/analyst_valid.md).
    include_brand: bool = False
    # Mark a candidate whose brand some history item shares: a flag a model can attend to instead of
    # matching brand names across the prompt. The tiny model used neither the names nor the mark in
    # 400-500 SFT steps (benchmarks/results/choice_probe_tiny-marked-brands.md); the list below works.
    mark_shared_brand: bool = False
    # A line after the candidates that lists those whose brand the history shares, most shared
    # history items first: the evidence sits next to where the model writes, a number to copy
    # instead of a match to find across the prompt (a feature of the catalog, in the spirit of
    # GR2's collaborative context, paper.md section 1). With it the tiny teacher reads the evidence
    # and beats the floor: test R@1 +0.043 [+0.027, +0.061] after 1,000 SFT steps
    # (benchmarks/results/teacher_tiny-brand-list-long.md).
    list_shared_brands: bool = False
    # A line after the candidates that lists those that other shoppers bought together with history
    # items (training-split counts from the feature store, feature_repo/co_purchase.py),
    # most co-purchases first. Co-purchase is the trace teacher's strongest signal (R@1 +0.076
    # over the floor on its own, benchmarks/results/analyst_valid.md), and like the brand list it
    # is a number next to where the model writes. The papers' prompts carry no such line (off there).
    list_co_purchases: bool = False
    # How the answer's ranking names the candidates: by SID (Diffusion-GR2, paper.md section 1) or
    # by their 1-based position in the prompt's candidate list (the GR2 technical report's
    # permutation of {1..K}, paper.md section 5). A model built from scratch must otherwise learn
    # to copy multi-token SIDs out of its prompt before any answer can be valid.
    answer_ids: Literal["sid", "index"] = "sid"

    @model_validator(mode="after")
    def _marks_need_brands(self) -> "PromptConfig":
        for flag in ("mark_shared_brand", "list_shared_brands"):
            if getattr(self, flag) and not self.include_brand:
                raise ValueError(f"prompts.{flag} needs prompts.include_brand: true (the evidence names brands the prompt shows)")
        return self


class FeaturesConfig(_Section):
    enabled: bool = True
    # Feast registry: "sql" (SQLAlchemy, sqlite or postgres URL) or "file".
    registry_type: Literal["sql", "file"] = "sql"
    # Empty means sqlite under work_dir.
    registry_path: str = ""
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "127.0.0.1:6379"
    project: str = "dgr2"


class EvaluationConfig(_Section):
    bootstrap_samples: int = Field(1000, ge=10)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0
    # Test users scored: "all", or "sample" (the fixed test sample of candidates.test_sample_size
    # users, the papers' protocol; cheaper on CPU). The sample is always reported as its own slice.
    test_users: Literal["all", "sample"] = "all"
    # At most this many of those test users, a seeded subset (0: all of them). The CPU profile's
    # `make run` scores a few hundred to fit its time budget; benchmarks score the whole sample.
    max_test_examples: int = Field(0, ge=0)
    # Intermediate models (SFT before RL, the naive conversion, CFT, CFT+OPD) and the final model
    # at taus other than the serving one are scored on this seeded subset of those users when the
    # budget needs it (0: the same users as the others).
    quick_test_examples: int = Field(0, ge=0)
    # The promotion gates decide on a seeded sample of this many valid examples (0: all of them),
    # never on test: test is for the report.
    valid_examples: int = Field(1000, ge=0)
    # Block-diffusion decoding thresholds tau reported for the final model: 1.0 is one token per
    # step (the papers' quality setting), lower values the speed sweep.
    thresholds: list[float] = Field(default_factory=lambda: [1.0, 0.9, 0.6, 0.4])
    # The tau the service decodes with and the promotion gate checks.
    serving_threshold: float = Field(0.9, gt=0.0, le=1.0)
    # Test prompts decoded for the speed comparison with the AR decoder, at batch 1 and batch 16.
    speed_prompts_batch1: int = Field(16, ge=1)
    speed_prompts_batch16: int = Field(64, ge=16)
    # Student forwards per draft of the lossless speculative decoder (the AR teacher verifies each
    # draft; components/decoding/speculative.py), in the speed comparison and the service.
    draft_steps: int = Field(1, ge=1)
    # Decoding settings of every evaluation (greedy, as the papers report).
    max_new_tokens: int = Field(320, ge=8)
    decode_batch_size: int = Field(64, ge=1)

    @property
    def decoding_taus(self) -> list[float]:
        """The taus the final model is scored and timed at: ``thresholds`` and the serving tau, highest first."""
        return sorted({*self.thresholds, self.serving_threshold}, reverse=True)

    @model_validator(mode="after")
    def _thresholds_in_range(self) -> "EvaluationConfig":
        if not self.thresholds or any(not 0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"evaluation.thresholds must be a non-empty list of values in (0, 1], got {self.thresholds}")
        return self


class ModelConfig(_Section):
    # Built-from-scratch Qwen3-architecture presets (components/modeling): "tiny" trains in
    # minutes on 2 CPU cores; "small" (tens of millions of parameters) is for full data on a GPU.
    preset: Literal["tiny", "small"] = "tiny"
    # A local directory with a pretrained HF causal LM and its tokenizer; empty builds from preset.
    base_model: str = ""
    # Target size of the BPE vocabulary trained on the dataset's text, before SID/special tokens.
    bpe_vocab_size: int = Field(4000, ge=300)
    max_length: int = Field(1024, ge=64)


class AnalystWeights(_Section):
    """How much each signal adds to a candidate's analyst score (the scale of ``traces.temperature``).

    A zero weight leaves the signal out of the score and out of the trace: with only ``category``,
    ``brand`` (shown by ``prompts.include_brand``) and ``pre_rank`` the traces argue from what the
    prompt shows, as an LLM teacher that reads only the prompt would.
    """

    co_purchase: float = Field(1.0, ge=0.0)  # per log(1 + co-purchases summed over history items)
    category: float = Field(1.0, ge=0.0)  # per share of history items in the candidate's leaf category
    brand: float = Field(0.5, ge=0.0)  # per share of history items of the candidate's brand
    transition: float = Field(1.0, ge=0.0)  # per share of transitions from the latest category into the candidate's
    popularity: float = Field(0.1, ge=0.0)  # per log(1 + training purchases by other users)
    pre_rank: float = Field(0.5, ge=0.0)  # per -log(pre-rank position): the pre-ranker is a strong prior


class TracesConfig(_Section):
    # "analyst": the offline trace writer grounded in training-split statistics;
    # "openai": any OpenAI-compatible chat endpoint (a large LLM served elsewhere).
    teacher: Literal["analyst", "openai"] = "analyst"
    # GR2 stage 2: rejection sampling keeps a trace only if its ranking puts the target first;
    # "targeted" conditions the trace on the target instead (kept for comparison).
    mode: Literal["rejection", "targeted"] = "rejection"
    max_tries: int = Field(4, ge=1)
    # Training examples sent to the teacher (a seeded sample of the train split); 0 = all.
    max_examples: int = Field(0, ge=0)
    # GR2/Diffusion-GR2 traces are about 130 tokens (paper.md section 1).
    target_tokens: int = Field(130, ge=16)
    # The analyst's answer: 0 ranks every candidate by its sampled evidence order; k > 0 moves only
    # the top k of that order to the front and keeps the rest in pre-rank order, trusting the
    # pre-ranker where the analyst has no argument (an answer a small model can learn to write).
    promote_top: int = Field(0, ge=0)
    endpoint_url: str = ""
    model_name: str = ""
    # Name of the environment variable holding the endpoint's API key (never the key itself).
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(0.8, ge=0.0)
    weights: AnalystWeights = Field(default_factory=AnalystWeights)
    timeout_s: float = Field(60.0, gt=0.0)
    seed: int = 0


# cosine / linear decay over the whole run after warmup; constant holds the rate; wsd
# (warmup-stable-decay) holds it, then decays linearly to 0 over the last ``decay_fraction`` of the steps.
Schedule = Literal["cosine", "linear", "constant", "wsd"]


class TrainingConfig(_Section):
    """Shared-loop defaults; each stage's own section overrides what differs."""

    learning_rate: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(20, ge=0)
    max_steps: int = Field(200, ge=1)
    schedule: Schedule = "cosine"
    # Share of max_steps over which the wsd schedule decays (annealing the rate makes the last
    # weights an average over the noise of the stable phase, not one sample of it).
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0)
    batch_size: int = Field(16, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0.0)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0


class StageTrainingConfig(_Section):
    """A training stage's overrides of the shared ``training`` section; None keeps the shared value."""

    max_steps: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0.0)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: Schedule | None = None
    decay_fraction: float | None = Field(None, gt=0.0, le=1.0)
    batch_size: int | None = Field(None, ge=1)
    grad_accum_steps: int | None = Field(None, ge=1)

    def training(self, shared: TrainingConfig) -> TrainingConfig:
        """The shared training settings with this stage's overrides applied."""
        overrides = {k: v for k, v in self.model_dump().items() if k in TrainingConfig.model_fields and v is not None}
        return shared.model_copy(update=overrides)


class MidtrainConfig(StageTrainingConfig):
    # GR2 stage 1 (paper.md section 3): next-item SID prediction and SID <-> text captioning.
    enabled: bool = True
    # Next-item pairs drawn (seeded) from the training positions; 0 keeps all of them.
    max_next_item_examples: int = Field(0, ge=0)
    # Also train text -> SID, the reverse captioning direction.
    caption_reverse: bool = True
    # Caption pairs drawn (seeded); 0 keeps all of them.
    max_caption_examples: int = Field(0, ge=0)
    # Candidate-recall pairs (a candidate block -> its SIDs as a JSON list), from training
    # examples' candidate lists; 0 turns the task off. See components/training/midtrain.py.
    candidate_recall_examples: int = Field(20000, ge=0)


class SftConfig(StageTrainingConfig):
    # GR2 SFT decouples the reasoning and answer losses with lambda_r < lambda_o; "0.1 / 1" are
    # the values one digest reports (paper.md section 4, marked unverified there).
    lambda_reasoning: float = Field(0.1, ge=0.0)
    lambda_answer: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _reasoning_weighs_less(self) -> "SftConfig":
        if self.lambda_reasoning >= self.lambda_answer:
            raise ValueError("sft.lambda_reasoning must be smaller than sft.lambda_answer (GR2: lambda_r < lambda_o)")
        return self


# Which masked positions a block-diffusion denoising step may commit (DiffusionConfig.commit_rule).
CommitRule = Literal["any", "prefix"]


class RlConfig(StageTrainingConfig):
    # DAPO (GR2 stage 3) and the diffusion RL stage share these (paper.md sections 4, 6.5, 9).
    enabled: bool = True
    group_size: int = Field(8, ge=2)
    # Rollout sampling; temperature 1 samples the policy itself, as the importance ratio assumes.
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(320, ge=8)
    # Train-split prompts RL samples from (seeded); 0 = all.
    max_prompts: int = Field(0, ge=0)
    # Clip-higher: a wider upper clip keeps low-probability tokens explorable (DAPO).
    clip_low: float = Field(0.2, gt=0.0, lt=1.0)
    clip_high: float = Field(0.28, gt=0.0)
    # Weight of the conditional format reward (Diffusion-GR2: alpha = 0.2).
    format_weight: float = Field(0.2, ge=0.0)
    invalid_reward: float = -1.0
    # DAPO drops the KL term; kept as a knob for comparison.
    kl_weight: float = Field(0.0, ge=0.0)
    # Block-diffusion policies only: the decoding threshold tau of the rollouts (TraceRL and SDAR
    # sample at 0.9).
    threshold: float = Field(0.9, gt=0.0, le=1.0)
    # The commit rule of those rollouts (DiffusionConfig.commit_rule). "any", the papers', whatever
    # the model is served with: on the tiny profile, OPD and RL rollouts under "prefix" gave a
    # student 97.5% valid at tau 0.9 (1,615 users), "any" rollouts one that "prefix" decoding
    # serves 99.3% valid (one draw each; benchmarks/results/commit_rule.md).
    commit_rule: CommitRule = "any"
    # Optimizer steps taken on each rollout batch (DAPO's mini-batch updates): after the first, the
    # policy has moved, the importance ratio leaves 1 and the clip bounds the update. max_steps
    # counts optimizer steps, so rollouts are sampled every updates_per_batch steps.
    updates_per_batch: int = Field(2, ge=1)
    # Dynamic sampling (DAPO): groups whose rewards are all equal carry no gradient and are
    # dropped; up to this many sampling rounds refill the batch with fresh prompts until it holds
    # batch_size groups with reward variance (1: drop without refilling).
    sampling_rounds: int = Field(3, ge=1)


class DiffusionRlConfig(RlConfig):
    # The block-diffusion model's RL stage (Diffusion-GR2 section 6.5): G = 8, symmetric eps = 0.2,
    # alpha = 0.2, constant LR, no warmup; the reward is the teacher's.
    clip_high: float = Field(0.2, gt=0.0)
    schedule: Schedule | None = "constant"
    warmup_steps: int | None = Field(0, ge=0)


class OpdConfig(StageTrainingConfig):
    # On-policy distillation of the block-diffusion student from the frozen AR teacher
    # (Diffusion-GR2 section 6.4; paper.md). The student decodes samples_per_prompt trajectories
    # per prompt with its production decoder at tau = threshold.
    enabled: bool = True
    samples_per_prompt: int = Field(4, ge=1)
    # forward_kl: KL(teacher || student) over the vocabulary at every committed position (the
    # paper's form). reverse_kl: the per-token advantage log p_T - log q_old in a clipped surrogate
    # (the GR2 tech report's form, Thinking Machines' OPD).
    objective: Literal["forward_kl", "reverse_kl"] = "forward_kl"
    temperature: float = Field(1.0, gt=0.0)
    threshold: float = Field(0.9, gt=0.0, le=1.0)
    # The commit rule of the rollouts, "any" whatever the model is served with (RlConfig.commit_rule).
    commit_rule: CommitRule = "any"
    max_new_tokens: int = Field(320, ge=8)
    # Train-split prompts OPD samples from (seeded); 0 = all. The paper runs one epoch.
    max_prompts: int = Field(0, ge=0)
    # Clip range of the reverse_kl surrogate.
    clip: float = Field(0.2, gt=0.0, lt=1.0)


# The smallest block: a block of one token is autoregressive decoding. Config, conversion and
# every checkpoint read back check against this one bound.
MIN_BLOCK_SIZE = 2


class DiffusionConfig(_Section):
    # Block-diffusion conversion (Diffusion-GR2 section 6; research note section 4). Response
    # tokens per block; the paper uses 32, the research note 8 for short re-ranker outputs.
    block_size: int = Field(8, ge=MIN_BLOCK_SIZE)
    # Which masked positions a denoising step may commit (components/decoding/block.py). "any":
    # every one whose probability reaches tau, plus the most confident (Fast-dLLM v2, the papers).
    # "prefix": the leftmost one and the run right after it that reaches tau, so no position is
    # fixed while a gap to its left is open. On make run's student at tau 0.9 "any" left 19 of
    # 1,615 answers invalid (malformed lists, a promoted candidate written twice after the list's
    # tail was committed first); "prefix" left 12, at 2.70 instead of 2.77 tokens per forward and
    # the same Recall@1 (benchmarks/results/commit_rule.md). Stored on the converted model.
    commit_rule: CommitRule = "prefix"


class CftConfig(StageTrainingConfig):
    # Conversion fine-tuning: the masked block-diffusion objective on the SFT traces, weighted
    # lambda_r / lambda_o as in SFT (sft.lambda_*). Per block the mask rate is U(mask_eps, 1).
    mask_eps: float = Field(1e-3, gt=0.0, lt=1.0)
    # Share of blocks view 1 masks whole, start included, so the model can decode folded (a
    # block's commit forward shared with the next block's first step; components/decoding/block.py).
    # 0 keeps the papers' CFT and the unfolded decoder.
    whole_block_rate: float = Field(0.0, ge=0.0, lt=1.0)


class TrackingConfig(_Section):
    # MLflow: one parent run per recipe run, one child run per stage, and the model registry.
    enabled: bool = True
    # Empty: $MLFLOW_TRACKING_URI (set by `make stack-up`), else a SQLite store next to work_dir
    # (<work_dir>/../mlflow/mlflow.db) with artifacts beside it.
    tracking_uri: str = ""
    experiment: str = "diffusion-gr2"
    teacher_model_name: str = "gr2-ar"
    student_model_name: str = "diffusion-gr2"
    # Each freshly trained stage's checkpoint is logged to its child run (cached stages point to
    # the run that logged it instead of uploading it again).
    log_checkpoints: bool = True


class PromotionConfig(_Section):
    # Gates a challenger must pass to become champion (components/tracking/promotion.py), decided
    # on evaluation.valid_examples of the valid split, at evaluation.serving_threshold for a
    # block-diffusion model. Tolerances bound how far below the champion the paired CI's upper
    # bound may lie (absolute for Recall@1 / NDCG@3) and how much slower it may decode (relative:
    # throughput varies a few percent between runs on a shared CPU).
    min_valid_rate: float = Field(1.0, ge=0.0, le=1.0)
    # A challenger must beat the pre-rank floor on valid (paired CI lower bound above zero for
    # Recall@1 and NDCG@3): a re-ranker that returns its input order is never a champion.
    require_beats_floor: bool = True
    recall_at_1_tolerance: float = Field(0.0, ge=0.0)
    ndcg_at_3_tolerance: float = Field(0.0, ge=0.0)
    throughput_tolerance: float = Field(0.1, ge=0.0, lt=1.0)


class ServingConfig(_Section):
    # The tau a request may ask for (evaluation.serving_threshold is the default): below ~0.3 the
    # block decoder commits most of a block at once and answers are rarely valid.
    min_threshold: float = Field(0.3, gt=0.0, le=1.0)
    max_threshold: float = Field(1.0, gt=0.0, le=1.0)
    # A re-rank request is ~1 KB (10 candidate ids and a history); anything far larger is a mistake.
    max_body_bytes: int = Field(65536, ge=1024)
    # Adaptive batching: concurrent requests wait at most this long to share one decode.
    max_batch_size: int = Field(16, ge=1)
    max_batch_wait_ms: float = Field(10.0, ge=0.0)
    # Intra-op threads of a decode. Decodes run on the service's worker threads, and there a second
    # OpenMP thread made batch-1 decodes 2-4x slower on a 2-core host and batch-16 ones no faster
    # (benchmarks/results/serve_load.md, 2026-12-08); one thread leaves the other core to requests.
    decode_threads: int = Field(1, ge=1)
    # A request waits at most this long for its decode; then it gets the pre-rank order with
    # fallback_reason "deadline" instead of a client-side timeout.
    deadline_ms: float = Field(30000.0, gt=0.0)
    # Requests queued or decoding at once in a worker; beyond it the service answers 429 with
    # Retry-After, so latency stays bounded under overload instead of growing with the queue
    # (about max_pending / throughput). Below the service's 512 requests in flight, past which
    # BentoML itself refuses without naming why (deploy/service.py, MAX_IN_FLIGHT).
    max_pending: int = Field(48, ge=1, le=511)
    # Shadow traffic: this share of the champion's (decoder "diffusion") requests is decoded again
    # by the challenger after the answer is sent, and the two rankings compared (Prometheus
    # dgr2_shadow_*). Packaging includes the challenger when this is above 0 and the registry has
    # one of the champion's catalogue. Shadow decodes run only while no live request waits, and
    # at most shadow_max_pending queue; the rest are dropped (counted), never delayed.
    shadow_fraction: float = Field(0.0, ge=0.0, le=1.0)
    shadow_max_pending: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _threshold_range(self) -> "ServingConfig":
        if self.min_threshold > self.max_threshold:
            raise ValueError(f"serving.min_threshold {self.min_threshold} exceeds serving.max_threshold {self.max_threshold}")
        return self


class SasrecConfig(_Section):
    # SASRec (Kang & McAuley 2018), a standard sequential-recommender baseline for Table 1:
    # causal self-attention over the item-id sequence with learned positional embeddings, trained
    # on the training split with full softmax cross-entropy over all items at every position. It
    # scores the same candidate lists as the re-rankers, so its row compares with theirs directly.
    enabled: bool = True
    hidden_size: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    # The most recent items a sequence keeps (the paper's n = 50 for Beauty).
    max_len: int = Field(50, ge=2)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # Passes over the training sequences, 20-25 s each on 2 CPU cores on bundled Beauty. Chosen on
    # all 22,363 valid users for `make run`'s budget: 2 epochs at 2e-2 give valid R@1 0.465 (1e-2:
    # 0.456, 6e-3: 0.442, 3e-3: 0.395; 1 epoch at 2e-2: 0.407), above 3 epochs at 3e-3 (0.427) and
    # in less time (benchmarks/results/sasrec_settings.md; sasrec.md records 12 epochs at 3e-3).
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(2e-2, gt=0.0)
    # Examples scored per forward pass.
    score_batch_size: int = Field(1024, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "SasrecConfig":
        if self.hidden_size % self.heads:
            raise ValueError(f"sasrec.hidden_size {self.hidden_size} must be a multiple of sasrec.heads {self.heads}")
        return self


class MonitoringConfig(_Section):
    # The scheduled evaluate-champion flow re-scores the champion on the newest data's gate sample
    # and flags it when a quality metric (valid rate, Recall@1, NDCG@3) fell by more than this
    # (absolute) since the promotion that made it champion.
    max_metric_drop: float = Field(0.02, ge=0.0, le=1.0)
    # The running service (e.g. http://127.0.0.1:3000): evaluate-champion reads its shadow-traffic
    # counters from /metrics into its report and onto the challenger's version, and check-drift
    # reads its recent requests from /traffic. Empty: not read.
    service_url: str = ""
    # Drift of what the service sees against the data version (components/evaluation/drift.py):
    # the service keeps its last traffic_window requests; check-drift gives no verdict on fewer
    # than drift_min_requests; at or above a drift_share of drifted columns it triggers
    # retrain_deployment (a Prefect "flow/deployment" name; empty: report only).
    traffic_window: int = Field(5000, ge=1)
    drift_min_requests: int = Field(100, ge=1)
    drift_share: float = Field(0.5, gt=0.0, le=1.0)
    retrain_deployment: str = "retrain/retrain"


class Config(_Section):
    profile: str = "default"
    seed: int = 0
    storage: StorageConfig = StorageConfig()
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    semantic_ids: SemanticIdConfig = SemanticIdConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    prompts: PromptConfig = PromptConfig()
    features: FeaturesConfig = FeaturesConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    model: ModelConfig = ModelConfig()
    traces: TracesConfig = TracesConfig()
    training: TrainingConfig = TrainingConfig()
    midtrain: MidtrainConfig = MidtrainConfig()
    sft: SftConfig = SftConfig()
    rl: RlConfig = RlConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    cft: CftConfig = CftConfig()
    opd: OpdConfig = OpdConfig()
    diffusion_rl: DiffusionRlConfig = DiffusionRlConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    serving: ServingConfig = ServingConfig()
    sasrec: SasrecConfig = SasrecConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "Config":
        if self.candidates.pre_ranker_window > self.candidates.history_max:
            raise ValueError("candidates.pre_ranker_window must not exceed candidates.history_max")
        return self

    def config_slice(self, *names: str) -> dict[str, Any]:
        """The named sections (``"candidates"``) or single fields (``"evaluation.seed"``) as JSON values."""
        payload: dict[str, Any] = {}
        for name in names:
            section, _, field = name.partition(".")
            value = getattr(self, section).model_dump(mode="json")
            if field and field not in value:
                raise KeyError(f"config has no field {name}")
            payload[name] = value[field] if field else value
        return payload

    def slice_hash(self, *names: str) -> str:
        """Stable hash of the named config sections or fields (a stage's cache key uses its own slice)."""
        return hashlib.sha256(json.dumps(self.config_slice(*names), sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the field."""


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    # YAML parsing gives ints, floats, bools and lists their natural types.
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a profile YAML (or the embedded defaults) and apply ``key=value`` overrides.

    Args:
        path: a YAML profile; ``None`` uses the embedded defaults.
        overrides: ``section.key=value`` strings, applied in order.

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable file, unknown key or a value of the wrong type, naming the field.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for item in overrides or []:
        key_path, value = _parse_override(item)
        _set_path(tree, key_path, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from None
