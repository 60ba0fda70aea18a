"""FLOPs of the fused attention kernels torch's counter leaves out, and what they do to a cut's FLOP share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.flops import flop_counter
from shared.splitting import ModelGraph


class TinyAttention(nn.Module):
    """Pixels as 64 tokens, embedded, one multi-head self-attention, pooled, classified."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 32)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(2).transpose(1, 2))
        attended = self.attention(tokens, tokens, tokens, need_weights=False)[0]
        out: torch.Tensor = self.head(attended.mean(1))
        return out


def test_scaled_dot_product_attention_on_cpu_is_counted() -> None:
    q = torch.randn(1, 4, 16, 8)
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 4 * 16 * 16 * 8)  # scores, then the weighted sum


def test_the_fused_multi_head_attention_counts_what_its_unfused_path_does() -> None:
    attention = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 16, 32)
    with torch.inference_mode(), flop_counter() as fused:
        attention(x, x, x, need_weights=False)  # inference: _native_multi_head_attention
    with flop_counter() as unfused:
        attention(x, x, x, need_weights=False)  # with autograd: linear layers and sdpa
    assert fused.get_total_flops() == unfused.get_total_flops() > 0


def test_attention_is_not_free_in_a_graph_s_flop_shares() -> None:
    graph = ModelGraph(TinyAttention().eval(), (1, 3, 8, 8))
    tokens, width = 64, 32
    embed = 2 * tokens * 3 * width
    attention = 2 * 3 * tokens * width * width + 2 * 2 * tokens * tokens * width + 2 * tokens * width * width
    assert graph.total_flops == embed + attention + 2 * width * 10
    shares = {cut.name: cut.head_flops_share for cut in graph.cuts}
    assert shares["embed"] < 0.02 and shares["attention"] > 0.99  # torch's counter alone: 0.95 and 0.95
