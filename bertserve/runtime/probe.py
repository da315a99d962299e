"""The warm-up check of a bf16 artifact on the serving CPU: its decisions on a few probe sentences
against the same IR run in fp32.

The export gated bf16 on its own CPU against PyTorch;
the serving CPU may run other bf16 kernels (AMX instead of AVX-512-BF16), so the service checks
again before it serves. Decisions are counted by the export gate's own rule
(`bertserve.runtime.decisions`): class per row, sign per logit for sigmoid models, tag per real
token, cosine >= 0.99 per embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from bertserve.modelrepo import TOKENIZER_FILE, ModelConfig, Task
from bertserve.runtime.base import Backend, Logits
from bertserve.runtime.decisions import agreement, decisions, embedding_agreement

PROBE_SENTENCES = (
    "The film was a delight from start to finish.",
    "I would not recommend this restaurant to anyone.",
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "Shares of Airbus rose after the company reported record deliveries.",
    "The weather in Oslo was cold, grey and wet all week.",
    "He said the update broke his phone and support never answered.",
    "A quiet, moving story with two wonderful lead performances.",
    "The committee will meet again in Geneva next month to vote on the plan.",
    "Terrible pacing, wooden dialogue and a plot that goes nowhere.",
    "Microsoft and the University of Cambridge opened a new lab in London.",
    "It is fine, nothing special, but the price is right.",
    "Serena Williams won her first title in Melbourne in 1999.",
    "Our flight from Chicago was delayed by four hours without any explanation.",
    "An absolute masterpiece of animation that children and adults will love.",
    "The new policy takes effect in January across all European offices.",
    "I loved the book but the movie adaptation was a disappointment.",
)


def probe_feeds(
    model: ModelConfig, version_dir: Path
) -> tuple[dict[str, npt.NDArray[np.int64]], npt.NDArray[np.int64]]:
    """The probe sentences tokenized by the model's own tokenizer, padded: (feeds, attention mask)."""
    tokenizer = Tokenizer.from_file(str(version_dir / TOKENIZER_FILE))
    tokenizer.enable_truncation(model.max_length)
    # NOTE: a saved tokenizer.json may carry padding (transformers writes BatchLongest); its padded
    # encodings would count pad tokens as real here, so the mask below would attend to them.
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(list(PROBE_SENTENCES))
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), model.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
        types[row, : len(e.ids)] = e.type_ids
    every = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: every[name] for name in model.inputs if name in every}, mask


def decision_agreement(
    reference: Logits, candidate: Logits, mask: npt.NDArray[np.int64], model: ModelConfig
) -> float:
    """Share of the decisions a user sees that are the same in both outputs (the export gate's rule)."""
    if model.task == Task.FEATURE_EXTRACTION:
        same, total = embedding_agreement(reference, candidate)
    else:
        same, total = agreement(
            decisions(reference, mask, model.task, model.problem_type),
            decisions(candidate, mask, model.task, model.problem_type),
        )
    return same / total


def agreement_with_fp32(candidate: Backend, fp32: Backend, model: ModelConfig, version_dir: Path) -> float:
    feeds, mask = probe_feeds(model, version_dir)
    return decision_agreement(fp32.infer(feeds), candidate.infer(feeds), mask, model)
