"""The texts a run's decoder reads in training, as the loader lays them out: what a corpus tokenizer learns from.

Each record is turned into its conversation by the loader's own `task_messages` (once with the canonical
instruction, then with sampled instruction variants and, when the mixture has G, paraphrases), and the chat
template's text pieces are what gets encoded: instructions, answers and the template's own words ("[INST]").
The image placeholder is cut out: it becomes visual tokens, never text.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from jaxpetct.data.inputs import TextConfig, task_messages
from jaxpetct.text import prompts


def conversation_texts(records: Iterable[dict], task: str, text: TextConfig, *, draws: int = 3,
                       seed: int = 0) -> Iterator[str]:
    """Text pieces of `draws` conversations per record (the first canonical), in record order: deterministic."""
    for i, record in enumerate(records):
        for d in range(draws):
            rng = None if d == 0 else np.random.default_rng([seed, i, d])
            msgs, _ = task_messages(record, task, text, rng)
            for piece in prompts.template_pieces(msgs, text.template):
                if piece.kind != "text":
                    continue
                for part in piece.text.split(prompts.IMAGE_PLACEHOLDER):
                    if part.strip():
                        yield part
