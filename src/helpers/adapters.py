"""Engine, model side of training: the base model for the task, prepared for tune.method.

LoRA / DoRA / rsLoRA wrap it with PEFT adapters; `freeze` freezes the embeddings and the first
blocks; `full` trains every weight. The task module (helpers.tasks) loads the base model and
names the new head that trains in full.
"""
from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from . import packed_attention, precision, tasks
from .config import Config, ConfigError

# LoRA targets per architecture: every linear layer of the blocks (attention and MLP), which
# the QLoRA paper found needed to match full fine-tuning; PEFT's own default (q, v only) is weaker.
LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_LIKE = ["query", "key", "value", "dense"]
TARGET_MODULES = {
    **{t: LLAMA_LIKE for t in tasks.chat.DECODERS},
    **{t: BERT_LIKE for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra")},
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}
PEFT_METHODS = ("lora", "dora", "rslora")


def build_model(cfg: Config, labels: list[str] | None = None):
    """The base model for the task, prepared for tune.method."""
    task = tasks.for_config(cfg)
    base = task.load_base(cfg, labels, dtype=frozen_dtype(cfg))
    if task.packs(cfg, base.config.model_type) and base.config._attn_implementation == "sdpa":
        packed_attention.use(base)  # attention within each packed chat, not across the packed row
    if cfg.tune.method in PEFT_METHODS:
        return add_lora(base, cfg)
    if cfg.tune.method == "freeze":
        return freeze_layers(base, cfg)
    return base  # full: every weight trains


def frozen_dtype(cfg: Config):
    """bf16 for a chat base model that only adapters train under bf16 autocast, else None (the default).

    Autocast casts every fp32 weight to bf16 at every matmul; storing the frozen weights in
    bf16 gives the same numbers without the casts (measured +21% tokens/s on SmolLM2 on CPU).
    PEFT keeps the adapters in fp32, and training.save_model merges them into the fp32 base.
    """
    if tasks.for_config(cfg).BF16_FROZEN_BASE and cfg.tune.method in PEFT_METHODS and cfg.model.dtype == "auto" \
            and precision.training_precision(cfg) == "bf16":
        return torch.bfloat16
    return None


def target_modules(model, cfg: Config) -> list[str] | str:
    """LoRA target modules: tune.lora.target_modules, else the default for the architecture."""
    if cfg.tune.lora.target_modules:
        return cfg.tune.lora.target_modules
    # Unknown architectures: PEFT's "all-linear" (every linear layer but the output head).
    return TARGET_MODULES.get(model.config.model_type, "all-linear")


def lora_config(model, cfg: Config) -> LoraConfig:
    """The adapter tune.method and tune.lora describe, for this model and task."""
    t, task = cfg.tune, tasks.for_config(cfg)
    return LoraConfig(
        r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout, target_modules=target_modules(model, cfg),
        use_dora=t.method == "dora",  # weight-decomposed: magnitude and direction learned apart
        use_rslora=t.method == "rslora",  # scale alpha/sqrt(r), so a larger r keeps learning
        task_type=task.PEFT_TASK, modules_to_save=task.modules_to_save(model))


def add_lora(model, cfg: Config):
    """Wrap the model with a LoRA / DoRA / rsLoRA adapter as tune.method and tune.lora say."""
    try:
        return get_peft_model(model, lora_config(model, cfg))
    except ValueError as e:
        raise ConfigError(f"tune.lora.target_modules: {e}\n  name modules of {model.config.model_type!r} "
                          f"(see model.named_modules()) or leave it empty for the default") from None


def freeze_layers(model, cfg: Config):
    """Freeze the embeddings and the first tune.freeze_layers blocks; the rest and the head train."""
    blocks = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)
                   and len(m) == model.config.num_hidden_layers), None)
    if blocks is None:
        raise ConfigError(f"tune.method: freeze cannot find the layer list of {model.config.model_type!r}; use lora")
    n = len(blocks) // 2 if cfg.tune.freeze_layers is None else cfg.tune.freeze_layers
    if n > len(blocks):
        raise ConfigError(f"tune.freeze_layers: {n}, but the model has {len(blocks)} layers")
    # BERT-style models keep positions and token types in an `embeddings` block: freeze it whole.
    # With tied embeddings (SmolLM2) this also freezes the output head: both are one matrix.
    embeddings = [m for name, m in model.named_modules() if name.split(".")[-1] == "embeddings"]
    for module in [*(embeddings or [model.get_input_embeddings()]), *blocks[:n]]:
        module.requires_grad_(False)
    return model


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_targets(model) -> list[str] | None:
    """The module names a PEFT adapter was put on (PEFT expands "all-linear"), or None without one."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    targets = config.target_modules
    return [targets] if isinstance(targets, str) else sorted(targets)
