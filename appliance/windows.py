"""Question + context windows for the extractive reader.

Shared by the runtime reader and by reader training so that both see exactly the same
tokenisation, window boundaries and character offsets.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer


@dataclass(frozen=True)
class Window:
    """One model input: the question plus a slice of the context."""

    input_ids: np.ndarray  # int64 [seq]
    token_type_ids: np.ndarray  # int64 [seq]
    context_offsets: list[tuple[int, int] | None]  # char span in the context, None for non-context tokens

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def first_context_token(self) -> int:
        return next(i for i, off in enumerate(self.context_offsets) if off is not None)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load tokenizer.json with the padding/truncation baked into it switched off."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _window_from_encoding(enc: Encoding) -> Window:
    offsets: list[tuple[int, int] | None] = [
        tuple(off) if (seq == 1 and not special) else None
        for off, seq, special in zip(enc.offsets, enc.sequence_ids, enc.special_tokens_mask)
    ]
    return Window(
        input_ids=np.asarray(enc.ids, dtype=np.int64),
        token_type_ids=np.asarray(enc.type_ids, dtype=np.int64),
        context_offsets=offsets,
    )


def make_windows(
    tokenizer: Tokenizer,
    pairs: list[tuple[str, str]],
    max_length: int,
    stride: int,
) -> list[list[Window]]:
    """Tokenise (question, context) pairs into overlapping windows, one list per pair (the reader's
    ``reader.max_length`` and ``reader.stride`` at run time; training passes its own)."""
    tokenizer.enable_truncation(max_length, stride=stride, strategy="only_second")
    try:
        encodings = tokenizer.encode_batch(pairs)
    finally:
        tokenizer.no_truncation()
    result = []
    for enc in encodings:
        windows = [_window_from_encoding(e) for e in [enc, *enc.overflowing]]
        result.append([w for w in windows if any(o is not None for o in w.context_offsets)])
    return result
