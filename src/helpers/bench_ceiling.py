"""The bench's yardstick: the machine's own matmul ceiling for a model's projection shapes, and the FLOPs
one trained token needs, counted from the model's config (helpers.bench prints each path's share)."""
from __future__ import annotations

import time



# ---------------------------------------------------------------- the ceiling

def projection_shapes(config) -> list[tuple[int, int]]:
    """(in, out) features of each linear projection of one transformer block, from a model config.

    Attention: q and o are hidden x (heads * head_dim); k and v use the key-value heads (grouped
    query attention). MLP: gated (gate, up, down) for configs with num_key_value_heads (the
    Llama family), else two matrices (BERT's intermediate and output).
    """
    h, ffn = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or h // heads
    attn = [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h)]
    mlp = [(h, ffn), (h, ffn), (ffn, h)] if hasattr(config, "num_key_value_heads") else [(h, ffn), (ffn, h)]
    return attn + mlp


def flops_per_token(config, loss_share: float, causal: bool = True) -> dict[str, float]:
    """FLOPs one trained token needs under LoRA, from the model config.

    A matmul of a token's (in,) vector by an (in, out) weight is 2*in*out FLOPs. LoRA training
    needs the forward pass and the gradient with respect to each projection's input (to reach
    the adapters below it), not the frozen weights' own gradient: 2 matmuls, 4*in*out per
    projection per layer. The output layer (hidden x vocab) is counted at the labelled positions
    only (loss_share of the tokens), as the work the loss needs; a classifier's head is one
    position per example (left out, as are the adapters' rank-r matmuls, the attention scores
    and the embeddings: a few percent at these lengths).
    """
    blocks = config.num_hidden_layers * sum(4 * i * o for i, o in projection_shapes(config))
    head = 4 * config.hidden_size * config.vocab_size * loss_share if causal else 0.0
    return {"blocks": float(blocks), "head": float(head), "total": float(blocks + head)}


def matmul_flops_per_s(shapes: list[tuple[int, int]], tokens: int, dtype, seconds: float = 2.0) -> float:
    """The machine's FLOP/s on one block's projection matmuls at `tokens` rows: forward (F.linear, as
    nn.Linear runs it) and input gradient (grad @ W), each shape's fastest pass over `seconds`.

    Each shape keeps its own best time (a pass is a few milliseconds), so on a machine shared with
    other work the ceiling is what the cores do when they are free, not an average over the load.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    mats = [(torch.randn(tokens, i, generator=g).to(dtype), torch.randn(o, i, generator=g).to(dtype),
             torch.randn(tokens, o, generator=g).to(dtype)) for i, o in shapes]  # x (T, in), W (out, in), dy (T, out)
    best = [float("inf")] * len(mats)
    with torch.no_grad():
        for x, w, dy in mats:  # warm-up: allocations, kernel choice
            F.linear(x, w), dy @ w
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or best[-1] == float("inf"):
            for k, (x, w, dy) in enumerate(mats):
                start = time.perf_counter()
                F.linear(x, w)  # (T, out): the forward pass
                dy @ w  # (T, in): the gradient with respect to the input
                best[k] = min(best[k], time.perf_counter() - start)
    return sum(4 * tokens * i * o for i, o in shapes) / sum(best)
