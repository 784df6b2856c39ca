"""Shared normalisation (Clark & Gardner 2018): one question over several passages is one training
example, with one softmax over the start (and one over the end) positions of all its windows.

The box reads five retrieved passages and must say which one holds the answer, or that none does.
A reader trained on one window at a time learns a probability that only means something inside
its window, so a confident guess in a wrong passage can outscore a hesitant right answer. Trained
over the question's own paragraph plus the passages of its article that BM25 ranks highest (none of
them holding the answer), the logits of all windows share one scale: the gold start is pushed
above every token of every passage, and the [CLS] positions together stand for "no passage here
answers" (the target of unanswerable questions). ``appliance.reader.shared_confidences`` reads the
model the same way.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from appliance.windows import make_windows
from build_tools.squad import ArticleSearch, SquadExample, label_window

if TYPE_CHECKING:  # torch is needed to train, not to build the groups
    import torch


@dataclass(frozen=True)
class Group:
    """One question over its passages: every window, with the gold token positions in each window
    ((0, 0) where the window does not hold the answer)."""

    windows: list[tuple[np.ndarray, np.ndarray, int, int]]  # (input_ids, token_type_ids, start, end)
    answerable: bool

    @property
    def width(self) -> int:
        return max(len(w[0]) for w in self.windows)


def build_groups(examples: list[SquadExample], tokenizer, max_length: int, stride: int, passages: int,
                 max_windows: int) -> list[Group]:
    """Each question with its own paragraph and ``passages - 1`` retrieved ones, at most
    ``max_windows`` windows (the gold paragraph's first). Questions whose gold offsets do not
    point at the answer, or whose answer no window holds, are left out."""
    search = ArticleSearch(examples)
    others = [search.without_answer(ex, passages - 1, passages + 2) for ex in examples]
    pairs = [(ex.question, text) for ex, extra in zip(examples, others) for text in [ex.context, *extra]]
    windows = iter(make_windows(tokenizer, pairs, max_length, stride))
    groups = []
    for ex, extra in zip(examples, others):
        own = next(windows)
        rest = [w for _ in extra for w in next(windows)]
        if not ex.is_impossible:
            s = ex.answer_starts[0]
            if s < 0 or ex.context[s : s + len(ex.answers[0])] != ex.answers[0]:
                continue
        labelled = [(w.input_ids, w.token_type_ids, *label_window(w, ex)) for w in own]
        if not ex.is_impossible and not any(start for _, _, start, _ in labelled):
            continue
        labelled += [(w.input_ids, w.token_type_ids, 0, 0) for w in rest]
        groups.append(Group(labelled[:max_windows], not ex.is_impossible))
    return groups


def group_batches(groups: list[Group], batch_windows: int, seed: int) -> list[list[int]]:
    """Whole groups packed into batches of at most ``batch_windows`` windows; shuffled, then sorted
    by width inside chunks (dynamic padding wastes little), then the batches shuffled."""
    rng = random.Random(seed)
    order = list(range(len(groups)))
    rng.shuffle(order)
    chunk = max(1, batch_windows * 50 // 3)
    batches: list[list[int]] = []
    for i in range(0, len(order), chunk):
        current: list[int] = []
        size = 0
        for g in sorted(order[i : i + chunk], key=lambda j: groups[j].width):
            n = len(groups[g].windows)
            if current and size + n > batch_windows:
                batches.append(current)
                current, size = [], 0
            current.append(g)
            size += n
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches


def collate_groups(groups: list[Group], idx: list[int], device: str):
    """Padded inputs of every window of the batch's groups, the mask of positions a span may start
    or end at ([CLS] and the context tokens), the gold-position mask, and each window's group."""
    rows = [(k, w) for k, g in enumerate(idx) for w in groups[g].windows]
    width = max(len(w[0]) for _, w in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    allowed = np.zeros((len(rows), width), dtype=bool)
    gold_start = np.zeros_like(allowed)
    gold_end = np.zeros_like(allowed)
    for r, (k, (input_ids, type_ids, start, end)) in enumerate(rows):
        n = len(input_ids)
        ids[r, :n], types[r, :n], mask[r, :n] = input_ids, type_ids, 1
        allowed[r, :n] = type_ids == 1
        allowed[r, n - 1] = False  # the closing [SEP]
        allowed[r, 0] = True
        if groups[idx[k]].answerable:
            if start:
                gold_start[r, start] = gold_end[r, end] = True
        else:
            gold_start[r, 0] = gold_end[r, 0] = True
    group_of = np.array([k for k, _ in rows])
    import torch

    to = lambda a: torch.from_numpy(a).to(device)
    return to(ids), to(types), to(mask), to(allowed), to(gold_start), to(gold_end), to(group_of)


def shared_norm_loss(logits: torch.Tensor, allowed: torch.Tensor, gold: torch.Tensor,
                     group_of: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean over groups of -log(probability mass on the gold positions), the softmax taken over
    every allowed position of every window of the group."""
    import torch

    neg = torch.finfo(logits.dtype).min
    all_scores = logits.masked_fill(~allowed, neg)
    gold_scores = logits.masked_fill(~gold, neg)
    losses = []
    for k in range(groups):
        rows = group_of == k
        losses.append(torch.logsumexp(all_scores[rows].reshape(-1), 0) - torch.logsumexp(gold_scores[rows].reshape(-1), 0))
    return torch.stack(losses).mean()
