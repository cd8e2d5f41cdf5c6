"""The registered re-ranker as an MLflow pyfunc: rendered prompts in, model answers out.

A converted model decodes block by block at a threshold tau (``params={"threshold": 0.9}``; the
serving tau by default), an AR model token by token. Prompt rendering and answer parsing stay with
the caller (the service), which knows the catalog; the pyfunc carries only the checkpoint.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

# Name of the checkpoint directory among the logged model's artifacts.
CHECKPOINT = "checkpoint"


class ReRankerModel(mlflow.pyfunc.PythonModel):
    """Greedy decoding of chat-templated prompts with a GR2 (AR) or Diffusion-GR2 checkpoint."""

    def __init__(self, max_new_tokens: int, serving_threshold: float) -> None:
        self.max_new_tokens = max_new_tokens
        self.serving_threshold = serving_threshold

    def load_context(self, context: Any) -> None:
        from components.modeling.factory import load_model

        self.model, self.tokenizer, self.meta = load_model(context.artifacts[CHECKPOINT])
        self.model.eval()

    # model_input (a list of prompts) is deliberately unannotated: MLflow infers the signature from
    # a type hint and would then drop the logged one, whose ``threshold`` param the service passes.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> list[str]:  # noqa: ANN001
        from components.decoding.ar import generate
        from components.decoding.block import generate_blocks
        from components.modeling.block_diffusion import is_block_diffusion

        # With a column signature MLflow hands the prompts over as a one-column DataFrame.
        frame = getattr(model_input, "iloc", None)
        prompts = [str(p) for p in (frame[:, 0] if frame is not None and model_input.ndim == 2 else model_input)]
        if is_block_diffusion(self.model):
            threshold = float((params or {}).get("threshold", self.serving_threshold))
            result = generate_blocks(self.model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, threshold=threshold)
        else:
            result = generate(self.model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens)
        return result.texts
