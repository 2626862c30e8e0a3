"""The typed sections of the experiment config, one per stage (each owned by the module of the same
name): their keys, types, defaults and checks. helpers.config puts them together and loads them.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Task = Literal["chat", "classification"]
# experiment.name becomes a folder name under reports/: a slug, so a shared params file cannot
# put a run folder elsewhere ("../..", "/srv/x", "a/b") or give it a name a shell or URL trips on.
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,79}")
NAME_RULE = ("1-80 letters, digits, '-', '_' or '.', starting with a letter or digit, no '..' "
             "(e.g. chat-faq or sentiment_v2)")


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message says what, where and how."""


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExperimentParams(Section):
    name: str = "experiment"  # run folders are reports/<name>-<timestamp>; a slug (NAME_RULE)
    task: Task = "chat"
    seed: int = 42  # the one seed: python, numpy, torch, splits, samplers, augmentation

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        # Here, not in create_run: every use of the name (run folders, the runs index, search
        # studies) sees only checked names, and the error names the key and the file.
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"not a safe run folder name: use {NAME_RULE}")
        return name


class SplitParams(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0)  # share of kept rows
    test: float = Field(0.1, ge=0.0, lt=1.0)


class DataParams(Section):
    # A bundled name (chatterbot, support, airline) or a path to a file.
    source: str = "chatterbot"
    # auto: from the file's extension and fields (bundled sources need no format).
    format: Literal["auto", "openai", "alpaca", "sharegpt", "csv", "jsonl"] = "auto"
    text_column: str = "text"  # classification files
    label_column: str = "label"
    prompt_column: str = "prompt"  # chat CSV files
    response_column: str = "response"
    labels: list[str] | None = None  # the allowed labels; None = every label seen
    topics: list[str] | None = None  # chatterbot topics to keep; None = all 19
    system_prompt: str | None = None  # added to chats that have none; None = keep as is
    max_examples: int | None = Field(None, ge=1)  # seeded subsample after loading, for quick runs
    strict: bool = False  # True: any bad row stops the run; False: bad rows are set aside
    split: SplitParams = SplitParams()


class ExploreParams(Section):
    top_ngrams: int = 20  # rows in the n-gram tables
    wordcloud_words: int = 150
    examples: int = 3  # examples shown per finding
    # Per-label / per-topic word clouds and n-grams for the biggest few groups only: chatterbot
    # has 19 topics, and 19 clouds bury the finding.
    top_groups: int = Field(4, ge=0)
    # NMF topics over TF-IDF: 5 is few enough to read in one table and enough to show the
    # data's main themes; 0 skips topic modeling.
    topics: int = Field(5, ge=0)
    topic_words: int = Field(8, ge=1)  # top words listed per topic: enough to name the topic
    # Tukey's fences: a row longer than Q3 + k * IQR tokens is an outlier; 1.5 is the usual k.
    outlier_iqr_k: float = Field(1.5, gt=0)
    # Time a few real optimizer steps of stage 04's path and a validation batch (helpers.budget) to
    # estimate a step's, an epoch's and a validation pass's wall time on this machine; off for tests
    # and tiny runs. A tune.time_budget_minutes times them either way (the budget needs the rate).
    measure_speed: bool = True


class CleanParams(Section):
    normalize_unicode: bool = True  # NFKC
    fix_mojibake: bool = True  # ftfy
    # Invisible C0/C1 control characters (tab, newline kept): never meant, and the airline
    # tweets hold "\x99\x85\x8d" bytes where emoji were lost in their latin-1 export.
    remove_control_chars: bool = True
    unescape_html: bool = True  # &amp; -> &
    strip_html_tags: bool = True
    collapse_whitespace: bool = True
    dedup_exact: bool = True
    min_chars: int = Field(1, ge=0)  # per text / per turn; shorter rows are dropped
    # Rows longer than this many tokens are dropped (`too_long`). None: chat uses model.max_length
    # (a cut chat loses the end of its answer); classification keeps every length (the
    # classifier reads the first model.max_length tokens, where a short text's label lives).
    max_tokens: int | None = Field(None, ge=1)
    # Personal data replaced by placeholders (<EMAIL>, <PHONE>, <CARD>, <IP>, <USER>), so a
    # tuned model can neither memorize nor repeat it; on for both tasks because the
    # placeholder keeps the signal ("they gave an email") while dropping the value.
    # "user" (@handles) is off by default: in the airline tweets nearly every handle is the
    # airline's public brand account, not a person, and it starts ~every text.
    pii: list[Literal["email", "phone", "card", "ip", "user"]] = ["email", "phone", "card", "ip"]
    # Whole-word, case-insensitive term map applied to every text, e.g. {"e-mail": "email"},
    # so one concept has one spelling (fewer tokens to learn, cleaner n-grams).
    terminology: dict[str, str] = {}
    # Classification only (a chat model would learn to answer in lowercase, without stopwords):
    # off because transformer tokenizers use case and function words ("not good").
    lowercase: bool = False
    remove_stopwords: bool = False
    dedup_near: bool = True  # drop near-duplicates (MinHash) after exact duplicates
    # Estimated Jaccard similarity of character 5-grams at or above which two rows are
    # near-duplicates ("thank you!" vs "thank you."); 0.85 keeps real paraphrases.
    near_dup_threshold: float = Field(0.85, gt=0.0, le=1.0)
    # Rows at least this similar are kept in the same split, so validation/test never hold
    # a near copy of a training row (that would inflate scores); None = plain row split.
    group_threshold: float | None = Field(0.6, gt=0.0, le=1.0)
    # Fewer kept rows than this stop the run in 02: 3 rows split 1 / 1 / 1 train on one example
    # and "measure" on one, which looks like a result and is none. 10 is the floor, not a goal.
    min_rows: int = Field(10, ge=3)
    # Drop rows beyond Q3 + k * IQR tokens; None = keep them (long but valid examples are
    # worth learning, and max_tokens already stops truncation). 01 shows what 1.5 would drop.
    outlier_iqr_k: float | None = Field(None, gt=0.0)
    # Drop rows whose characters are mostly symbols/digits (share of non-letter, non-space
    # characters above this); None = keep. 0.5 catches "!!!!!!!" and ASCII art.
    max_symbol_share: float | None = Field(None, gt=0.0, le=1.0)
    # Class imbalance on the train split (classification): resample, or "none" and let tune
    # set tune.class_weights (weights from the rows tune trains on; 02 records them for reading).
    balance: Literal["none", "oversample", "undersample"] = "none"


# helpers.augment's ops (its OPS is built from this list): a typo in augment.ops is a config
# error naming the key, before any stage runs. persona, multiturn, paraphrase: chat only.
AugmentOp = Literal["synonym", "swap", "delete", "insert", "typo", "case", "punct",
                    "persona", "multiturn", "paraphrase"]


class AugmentParams(Section):
    enabled: bool = True
    ratio: float = Field(0.3, ge=0.0)  # new examples per training example
    ops: list[AugmentOp] = ["synonym", "swap", "delete", "typo"]
    # Share of a text's words each word-level op changes (EDA's alpha); the EDA paper found
    # 0.1 best for small data: enough to vary, little enough to keep the label / meaning.
    word_share: float = Field(0.1, gt=0.0, le=1.0)
    # The "paraphrase" op's answer length: a user question rarely needs more.
    paraphrase_max_new_tokens: int = Field(48, ge=1)


class ModelParams(Section):
    # None = the bundled default for the task (smollm2-135m-instruct / all-minilm-l6-v2);
    # or any Hugging Face id or local folder (safetensors only, no remote code).
    name_or_path: str | None = None
    # Tokens per example, chat template included. auto: stage 01 picks the smallest multiple of 8
    # covering the 99th percentile of the data's token lengths, capped by the model's context and
    # a memory cap (helpers.measures.auto_max_length), and writes the number into the run's
    # config.yaml, so stages 02-05 read an int. A number is used as given.
    max_length: Annotated[int, Field(ge=8)] | Literal["auto"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class LoraParams(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    # No dropout on the adapters' input by default (PEFT's own default): with it, each adapted
    # projection draws and applies its own mask, which made a LoRA step 40% longer on short chats
    # (16 steps: 34.6-35.2 s against 24.3-25.2 s) and 51% longer on the airline classifier (150 steps:
    # 79.8 vs 52.7 s). The bundled runs gave the same results without it (chat-faq, 152 steps: test
    # perplexity 8.58 vs 8.60; sentiment-airline, 466 steps: macro F1 0.786 vs 0.779, AUC 0.931 vs
    # 0.929); 2-core AVX-512 EPYC, 2026-12-05. Early stopping and the best checkpoint guard against
    # overfitting; raise it (0.05-0.1) when the report says the run overfits.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None  # None = a sensible default per architecture


class TuneParams(Section):
    method: Literal["lora", "dora", "rslora", "full", "freeze"] = "lora"
    lora: LoraParams = LoraParams()
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs and the time budget
    # Train for this many minutes instead of epochs: stage 01 times a few real optimizer steps and a
    # validation pass (helpers.budget) and writes the steps that fit into the run's config.yaml as
    # tune.max_steps (with eval_steps / save_steps when it changes the cadence: helpers.budget.plan_budget).
    # None = steps from epochs. The figures then depend on the machine's speed, as the budget does.
    time_budget_minutes: float | None = Field(None, gt=0)
    # Small data: when epochs give fewer optimizer steps than this, train this many (several epochs;
    # early stopping and the best checkpoint guard against overfitting). 77 FAQ pairs at batch 8 are
    # 10 steps an epoch: one epoch barely moves the loss. 0 = off. Not applied to max_steps or budgets.
    min_steps: int = Field(100, ge=0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["linear", "cosine", "constant", "step"] = "linear"
    eval_steps: int = Field(50, ge=1)
    # Validate during training on this many rows of the validation split (a seeded sample, in split
    # order), for early stopping, the best checkpoint and the loss curve; None = all of them. A time
    # budget sets it when whole passes would take more than a quarter of the budget (helpers.budget).
    # Stage 05's scores use the whole test split either way.
    eval_rows: int | None = Field(None, ge=1)
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(10, ge=1)
    early_stopping_patience: int | None = 3  # evaluations without improvement; None = off
    # Method "freeze": the embeddings and the first N transformer layers stay fixed, the rest
    # and the head train; None = half the layers (a common middle ground for small data).
    freeze_layers: int | None = Field(None, ge=0)
    # Chat: put a batch's examples end to end in one row with restarting position ids, so no
    # compute goes to pad tokens (per-example attention is kept: checked in test_tune.py);
    # False = pad each batch to its longest example, batches grouped by length.
    packing: bool = True
    # auto: bf16 autocast where the hardware has it (Ampere+ GPU, or a CPU with AVX-512 bf16 /
    # AMX: ~1.45x faster than fp32 for LoRA on SmolLM2 here), else fp16 on GPU, else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Classification: weigh the loss by inverse class frequency ("balanced", clean.class_weights)
    # of the rows tune trains on: train.augmented.jsonl when 03 wrote it, else train.jsonl. So
    # they can differ from metrics["clean"]["class_weights"] (the clean train split, before
    # augmentation). Off by default because it trades accuracy for minority-class recall.
    class_weights: bool = False
    # Scheduler "step" (StepLR): multiply the LR by step_gamma every step_size optimizer
    # steps after warmup; None = a third of the training steps (two decays per run).
    step_size: int | None = Field(None, ge=1)
    step_gamma: float = Field(0.5, gt=0.0, le=1.0)
    # Checkpoints kept on disk: the best one is always kept too (load_best_model_at_end);
    # 2 = best + last, enough to resume without filling the disk with 500 MB full models.
    keep_checkpoints: int = Field(2, ge=1)
    # Chat: answers to the first N validation prompts generated at each evaluation (and at
    # step 0), so a reader sees what the loss numbers mean; small because it costs time.
    sample_prompts: int = Field(2, ge=0)
    sample_max_new_tokens: int = Field(24, ge=1)
    # Classification: k-fold cross-validation on the train split after the main run, with
    # an ensemble of the fold models scored on the test split; 0 = off (it costs k trainings).
    cv_folds: int = Field(0, ge=0)
    # Classification: train this many classifiers on the same rows, with seeds experiment.seed,
    # + 1, ... (another head and adapter start, another order of the rows), and score, label and
    # export them as one: their class probabilities averaged (helpers.ensemble). 1 = one model.
    # A time budget is shared: each member trains the steps of time_budget_minutes / ensemble.
    ensemble: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check_tune(self) -> "TuneParams":
        # Checked here so the error names the key before any model is loaded.
        if self.cv_folds == 1:
            raise ValueError("tune.cv_folds: 1 fold is no cross-validation; use 0 (off) or 2 and more")
        # The best checkpoint is picked at evaluations, so every save must fall on one.
        if self.save_steps % self.eval_steps:
            raise ValueError(f"tune.save_steps ({self.save_steps}) must be a multiple of tune.eval_steps "
                             f"({self.eval_steps}): the best checkpoint is chosen at evaluations")
        return self


class SearchParams(Section):
    enabled: bool = False
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: int = Field(8, ge=1)
    # None = sqlite in the run folder (one worker); any Optuna storage URL. On a shared
    # non-SQLite storage each worker's TPE / random seed also mixes in its host and process id,
    # so workers starting together draw different trials (env TUNEBOOK_SEARCH_WORKER names a
    # worker instead); grid workers share one seed: the grid hands each a different point.
    storage: str | None = None
    # Dotted params keys -> {type: float|int|categorical, low, high, log, step, choices},
    # e.g. {"tune.learning_rate": {type: float, low: 1e-5, high: 1e-3, log: true}}.
    space: dict[str, Any] = {}
    # What a trial is scored on: a key of the Trainer's eval logs. The best eval loss is
    # the one score both tasks have; e.g. eval_macro_f1 with maximize for classification.
    metric: str = "eval_loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    # Stop a trial at an evaluation where it is worse than the median of earlier trials
    # there (Optuna's MedianPruner): most of a search's time goes to hopeless trials.
    prune: bool = True
    # Several workers on one shared storage join the study of this name; None = the
    # experiment name (one study per run folder with the default sqlite storage).
    study_name: str | None = None
    # A worker's running trial sends a heartbeat this often; one silent for 3x as long (its
    # worker was killed, or its machine lost) is marked failed by the other workers, which
    # then run a trial in its place. A dead worker on the same machine is noticed at once.
    heartbeat_seconds: int = Field(30, ge=1)


class EvaluateParams(Section):
    max_examples: int | None = None  # test examples scored; None = the whole test split
    generate_examples: int = Field(8, ge=0)  # prompts answered by base and tuned model
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(16, ge=1)
    # Seeded bootstrap resamples behind every 95% interval: 500 keeps the interval ends
    # stable to about the second digit and costs well under a second on numpy.
    bootstrap_resamples: int = Field(500, ge=50)
    # Chat: test prompts re-scored after helpers.textops' noise ops, at augment.word_share (the
    # noise level training was augmented with, so the table shows what augmentation bought);
    # each op costs one more scoring pass per model, so two by default; [] = skip.
    robustness_ops: list[Literal["typo", "case", "punct", "synonym", "swap", "delete"]] = ["typo", "case"]
    # Rows in the best / worst / most-confidently-wrong example tables: enough to spot a
    # pattern, few enough to read.
    show_examples: int = Field(5, ge=0)
    # Chat scoring precision. fp32: the figures depend only on the seed. bf16: autocast, faster
    # on CPUs with AMX / AVX-512 bf16 and on GPUs, but rounds. auto: use bf16 only if, on one
    # batch, it moves perplexity < 0.5% and is faster for both models; that timing check
    # depends on the machine's load, so the reported perplexities can change between reruns.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"


class ReportParams(Section):
    title: str | None = None  # None = the experiment name
    # Rows of a table shown in report.html; the CSV beside it keeps every row. 100 keeps a
    # per-example table readable and the page small enough to mail.
    max_table_rows: int = Field(100, ge=1)


class SweepParams(Section):
    # Dotted params keys -> the values to try, e.g. {"tune.lora.r": [8, 16]}: every combination
    # is its own run (helpers.sweep), the first value of each key making the reference variant
    # the others are compared with. {} = one plain run. Each variant's config.yaml holds the
    # values it ran with and an empty sweep section.
    grid: dict[str, list[Any]] = {}
    name: str | None = None  # the sweep page's folder is reports/sweep-<name>-<stamp>; None = experiment name

    @model_validator(mode="after")
    def _check_grid(self) -> "SweepParams":
        # The key's existence and each value's type are checked when the variants are built
        # (helpers.sweep.variant_configs), with the same messages as a params file.
        for key, values in self.grid.items():
            if key.split(".")[0] == "sweep":
                raise ValueError(f"sweep.grid: {key!r} cannot sweep the sweep section itself")
            if not values:
                raise ValueError(f"sweep.grid.{key}: give at least one value, e.g. [8, 16]")
        return self


# Defaults that differ by task, as dotted keys over the section defaults above (which are the
# chat defaults). load_config puts them under every layer, so a key given in a params file or an
# override wins, and config.yaml spells out the value that ran either way.
