"""Physical structured pruning of BERT layers: fewer heads and FFN neurons = smaller matrices.

transformers 5 dropped ``prune_heads``; slicing the Linear layers ourselves keeps the pruned
model an ordinary BertModel whose ONNX export is simply smaller.
"""
from __future__ import annotations

import torch
from transformers.pytorch_utils import prune_linear_layer


def head_rows(heads: list[int], head_size: int) -> torch.Tensor:
    """Row indices of the Q/K/V projections (columns of the output projection) of these heads."""
    return torch.tensor([h * head_size + i for h in heads for i in range(head_size)], dtype=torch.long)


def shrink_layer(layer, keep_heads: list[int], keep_neurons: list[int]) -> None:
    """Keep only the given heads and FFN neurons of one BertLayer (in place)."""
    attn = layer.attention.self
    if len(keep_heads) != attn.num_attention_heads:
        if not keep_heads:
            raise ValueError("a layer needs at least one attention head")
        rows = head_rows(sorted(keep_heads), attn.attention_head_size)
        attn.query = prune_linear_layer(attn.query, rows, dim=0)
        attn.key = prune_linear_layer(attn.key, rows, dim=0)
        attn.value = prune_linear_layer(attn.value, rows, dim=0)
        layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, rows, dim=1)
        attn.num_attention_heads = len(keep_heads)
        attn.all_head_size = len(keep_heads) * attn.attention_head_size
    if len(keep_neurons) != layer.intermediate.dense.out_features:
        if not keep_neurons:
            raise ValueError("a layer needs at least one FFN neuron")
        idx = torch.tensor(sorted(keep_neurons), dtype=torch.long)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, idx, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, idx, dim=1)
