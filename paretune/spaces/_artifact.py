"""Shared artifact helpers: a prompt-learning adapter cannot merge, so it ships beside the base."""

from __future__ import annotations

import os
from typing import Any

ADAPTER_DIR = "adapter"


def is_peft(model: Any) -> bool:
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config")


def save_adapter(model: Any, directory: str) -> None:
    """Write the (unmerged) peft adapter of ``model`` under ``directory/adapter``.

    The trained head was put back into the base model (so the base saves with plain keys);
    peft's loader still expects it in the adapter, under the keys peft itself would write.
    """
    if not is_peft(model):
        return
    from safetensors.torch import load_file, save_file

    path = os.path.join(directory, ADAPTER_DIR)
    model.save_pretrained(path)
    weights = os.path.join(path, "adapter_model.safetensors")
    tensors = load_file(weights)
    base = model.get_base_model()
    for head in ("classifier", "score"):
        module = getattr(base, head, None)
        if module is not None and f"base_model.{head}.weight" not in tensors:
            for name, p in module.named_parameters():
                tensors[f"base_model.{head}.{name}"] = p.detach().cpu().contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})


def attach_adapter(model: Any, directory: str) -> Any:
    """Wrap a reloaded base with the adapter shipped beside it, if there is one."""
    path = os.path.join(directory, ADAPTER_DIR)
    if not os.path.isdir(path):
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, path)


def write_base_and_adapter(model: Any, directory: str) -> None:
    """Default format for an unmerged adapter: the base as safetensors, the adapter beside it."""
    base = model.get_base_model() if is_peft(model) else model
    base.save_pretrained(directory, safe_serialization=True)
    save_adapter(model, directory)
