"""Engine: attention for packed chat batches that costs what the chats cost, not what the row costs.

A packed batch (`DataCollatorWithFlattening`) is one row of every chat in the batch, the positions
restarting at 0 at each chat. With `sdpa`, transformers builds a dense block-diagonal causal mask
over the whole row and attends across all of it, masked: the cost grows with the square of the row,
so 16 chats of 170 tokens (2,700 in the row) cost as much attention as one chat of 2,700 tokens,
16 times what they cost apart. `packed_sdpa` attends within each chat instead (one SDPA call per chat, causal, no mask), so
attention costs the sum of the squares of the chats' lengths. Anything else (a padded batch, a
generation step with a cache, one sequence) goes to transformers' own `sdpa` unchanged.

    use(model)        the model attends with packed_sdpa (training and validation of packed batches)
    restore(model)    back to sdpa (before the model is saved or used to generate elsewhere)
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "tunebook_packed_sdpa"


def segments(position_ids: torch.Tensor | None, length: int) -> list[int] | None:
    """The start of every chat in a packed row (where the positions restart at 0), and the row's end;
    None when the row is not packed (one sequence, or no positions)."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return starts + [length]


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                position_ids: torch.Tensor | None = None, **kwargs):
    """Causal attention within each chat of a packed row; anything else as `sdpa`. Shapes as transformers'
    attention functions: query/key/value (batch, heads, tokens, head_dim) in, (batch, tokens, heads, head_dim) out."""
    length = query.shape[2]
    bounds = segments(position_ids, length) if attention_mask is None and key.shape[2] == length else None
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    parts = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                    dropout=dropout, scaling=scaling, is_causal=True)[0]
             for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, dim=1), None


def packed_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs):
    """No mask where packed_sdpa needs none (no padding, no cache: it finds the chats from the positions);
    sdpa's own mask everywhere else (padding, or new tokens after cached ones)."""
    if q_offset == 0 and kv_offset == 0 and q_length == kv_length and (
            attention_mask is None or bool(attention_mask.all())):
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(NAME, packed_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, packed_mask)


def use(model) -> None:
    """Attend with packed_sdpa (the model and every submodule config that names an implementation)."""
    model.set_attn_implementation(NAME)


def restore(model) -> None:
    """Back to transformers' sdpa."""
    model.set_attn_implementation("sdpa")
