"""Hugging Face model folder or hub id → engine (weights, dtype, device) + tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .llama import Engine, EngineConfig

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class ModelLoadError(ValueError):
    pass


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"--device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device}: CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """Spec-Bench's default: fp16 on GPU; fp32 on CPU, where half precision is slow and inexact."""
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def model_folder(name_or_path: str) -> Path:
    """A local folder as is; anything else is taken as a hub id and fetched (cached)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a model folder (no config.json)")
        return path
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise ModelLoadError(f"model folder {name_or_path} does not exist")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name_or_path, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "tokenizer*", "*.txt", "medusa_lm_head.*"]))
    except Exception as err:  # network, auth, missing repo: one line for the user
        raise ModelLoadError(f"could not fetch {name_or_path} from the hub: "
                             f"{str(err).splitlines()[0]}") from None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint folder: single or sharded safetensors, else PyTorch .bin."""
    from safetensors.torch import load_file
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for file in files:
        if file.suffix == ".safetensors":
            state.update(load_file(str(file)))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def load_engine(name_or_path: str, dtype: str | None = None, device: str | None = None,
                with_tokenizer: bool = True):
    """Return (engine, tokenizer or None, folder)."""
    folder = model_folder(name_or_path)
    cfg = EngineConfig.from_hf(json.loads((folder / "config.json").read_text()))
    dev = resolve_device(device)
    engine = Engine(cfg)
    state = read_state_dict(folder)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = engine.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    unexpected = [k for k in unexpected if "rotary_emb" not in k]
    if missing or unexpected:
        raise ModelLoadError(f"{folder}: weights do not fit the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    engine = engine.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval()
    engine.requires_grad_(False)
    return engine, load_tokenizer(folder) if with_tokenizer else None, folder


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise ModelLoadError(f"{folder}: tokenizer does not load: {str(err).splitlines()[0]}") \
            from None
