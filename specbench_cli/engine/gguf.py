"""llama.cpp GGUF file → an ordinary Hugging Face folder, converted once and cached.

The engine reads safetensors folders only; transformers can read a GGUF (dequantizing it) but
refuses to `save_pretrained` the result, so we write the folder ourselves. The cache key is the
file's content hash, so a renamed or moved file is not converted again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ModelLoadError
from ..files import checked, read_json, sha256_of, specbench_home
from .load import read_config, safetensors_header

GGUF_MAGIC = b"GGUF"
MARKER = "specbench_gguf.json"  # written last: its presence means the folder is complete
INSTALL_HINT = "GGUF files need the 'gguf' and 'accelerate' packages: pip install 'specbench-suite[gguf]'"
# Not part of the model: where transformers loaded it from, and the quantizer it refuses to save.
DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")


def gguf_folder(path: Path, home: Path | None = None, console=None, force: bool = False) -> Path:
    """The cached HF folder for GGUF file `path`, converting it first if needed (or `force`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    check_header(path)  # before anything heavy: a wrong file fails in microseconds
    home = home if home is not None else specbench_home()
    sha = sha256_of(path)
    folder = Path(home) / "gguf" / sha[:16]
    if not force and (folder / MARKER).is_file():
        why = why_unusable(folder, sha)
        if why is None:
            return folder
        print(f"specbench: the converted folder {folder} {why}; converting {path.name} again",
              file=sys.stderr, flush=True)
        force = True
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    try:  # only converting needs them; a cached folder loads without
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError(INSTALL_HINT) from None

    folder.parent.mkdir(parents=True, exist_ok=True)
    # A private temp dir per process: parallel workers converting the same file do not collide.
    part = Path(tempfile.mkdtemp(prefix=f"{folder.name}.part-", dir=folder.parent))
    part.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        status = (console.status(f"Converting {path.name} to a Hugging Face folder (once)…")
                  if console is not None else contextlib.nullcontext())
        start = time.perf_counter()
        with status:
            _convert(path, part)
        (part / MARKER).write_text(json.dumps({
            "source": path.name, "sha256": sha, "size": path.stat().st_size,
            "convert_seconds": round(time.perf_counter() - start, 2),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        if folder.exists() and not (folder / MARKER).is_file():
            shutil.rmtree(folder)  # incomplete leftover from an older layout or a manual copy
        try:
            os.rename(part, folder)
        except OSError:  # another process finished first; its folder is as good as ours
            if not (folder / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)
    if console is not None:
        console.print(f"[dim]GGUF {path.name} converted → {folder}[/dim]")
    return folder


def check_header(path: Path) -> None:
    """GGUF's fixed header (magic, version 1-3, tensor and metadata counts), or one line."""
    with path.open("rb") as fh:
        head = fh.read(24)
    if head[:4] != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (no GGUF magic bytes)")
    version, tensors, keys = struct.unpack("<IQQ", head[4:24].ljust(20, b"\0"))
    if len(head) < 24 or version not in (1, 2, 3) or tensors > 1 << 20 or keys > 1 << 20:
        raise ModelLoadError(f"{path}: not a GGUF file this reader knows (version {version}, "
                             f"{tensors} tensors, {keys} metadata keys: truncated or corrupt?)")


def why_unusable(folder: Path, sha: str) -> str | None:
    """Why a cached conversion must not be trusted (a marker of another file, a weights file or
    config cut short or damaged since); None where it is whole."""
    try:
        marker = checked(read_json(folder / MARKER, ModelLoadError), {"sha256": str},
                         str(folder / MARKER), ModelLoadError)
        if marker["sha256"] != sha:
            return "was converted from another file"
        read_config(folder)
        safetensors_header(folder / "model.safetensors")
    except (ModelLoadError, OSError) as err:
        return f"is damaged ({err})"
    return None


def _convert(path: Path, out: Path) -> None:
    # torch and transformers (seconds to import) only when a file is converted
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as err:  # unsupported architecture or tokenizer: one line for the user
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"{path.name}: transformers cannot convert this GGUF file: {reason}") from None
    config = {k: v for k, v in model.config.to_dict().items() if k not in DROP_CONFIG_KEYS}
    config["architectures"] = [type(model).__name__]  # GGUF configs leave it empty
    config["dtype"] = "float32"
    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # shares the embedding's storage; safetensors refuses
    bad = sorted({str(t.dtype) for t in state.values() if not t.is_floating_point()})
    if bad:  # a loader that kept quantized blocks instead of dequantizing
        raise ModelLoadError(f"{path.name}: transformers left weights quantized ({', '.join(bad)})")
    save_file({k: t.detach().contiguous() for k, t in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
