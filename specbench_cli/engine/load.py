"""Hugging Face model folder or hub id → engine (weights, dtype, device) + tokenizer."""

from __future__ import annotations

import hashlib
import json
import math
import mmap as mmap_module
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ModelLoadError
from ..files import checked, read_json
from . import kernels
from .arena import pack_weights
from .fused import choose_fused
from .kernels import choose_kernels
from .llama import SUPPORTED_MODEL_TYPES, Engine, EngineConfig
from .timing import block_latency

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# run.json records the short name, whichever alias the user typed.
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# torch's own names too, as `from_pretrained(dtype=...)` users type them.
DTYPE_ALIASES = {**DTYPES, "float32": torch.float32, "float16": torch.float16,
                 "half": torch.float16, "bfloat16": torch.bfloat16}
# safetensors header dtype → torch; others (int8, fp8, …) are quantised formats we do not run.
STORED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Read only where integers or booleans are asked for: EAGLE-3's draft→target id maps.
MAP_DTYPES = {"I64": torch.int64, "BOOL": torch.bool}


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
    """An explicit dtype checked; for `auto` the default before measuring (choose_dtype):
    Spec-Bench's fp16 on a GPU, fp32 on a CPU."""
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype.lower() not in DTYPE_ALIASES:
        raise ModelLoadError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_ALIASES)}")
    return DTYPE_ALIASES[dtype.lower()]


# bf16 replaces fp32 under `auto` only when its one-token step is at least this much faster: a
# near-equal speed is not worth half precision's near-ties.
BF16_GAIN = 0.10
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def choose_dtype(dtype: str | None, device: torch.device, folder: Path,
                 console=None) -> tuple[torch.dtype, str]:
    """The run dtype and why. An explicit one is taken as given. `auto`: fp16 on CUDA
    (Spec-Bench's protocol); on a CPU with bf16 units (AVX512-BF16 or AMX) the faster of fp32
    and bf16 for this model's one-token step, measured once and cached per machine and model
    in $SPECBENCH_HOME/kernels/dtypes.json; fp32 on other CPUs."""
    if dtype not in (None, "auto"):
        return resolve_dtype(dtype, device), "given"
    if device.type == "cuda":
        return torch.float16, "auto: fp16 on CUDA (Spec-Bench's protocol)"
    if not set(BF16_FLAGS) & kernels.cpu_flags():
        return torch.float32, f"auto: fp32 (this CPU has no {' or '.join(BF16_FLAGS)})"
    read_config(folder)              # an unusable config says so before timing
    config = (folder / "config.json").read_bytes()
    key = (f"{kernels.machine_key(device)} | {hashlib.sha256(config).hexdigest()[:12]} "
           f"{sum(f.stat().st_size for f in checkpoint_files(folder))}")

    def measure():
        if console is not None:
            console.print("[dim]auto dtype: timing a one-token step in fp32 and in bf16 (once for "
                          "this model and machine)[/dim]")
        return {name: round(step_ms(folder, name, device, console), 3) for name in ("fp32", "bf16")}

    ms = kernels.cached_entry(kernels.kernels_home() / "dtypes.json", key,
                              lambda e: kernels.timed_ms(e, ("fp32", "bf16")), measure)
    pick = "bf16" if ms["bf16"] < (1 - BF16_GAIN) * ms["fp32"] else "fp32"
    return DTYPES[pick], (f"auto: {pick} (one-token step measured on {kernels.cpu_name()}: fp32 "
                          f"{ms['fp32']:.2f} ms, bf16 {ms['bf16']:.2f} ms; bf16 is taken when "
                          f"≥{100 * BF16_GAIN:.0f}% faster)")


def step_ms(folder: Path, dtype: str, device: torch.device, console=None, context: int = 64,
            repeats: int = 9) -> float:
    """Median ms of this model's one-token forward after `context` tokens."""
    engine, _, _ = load_engine(str(folder), dtype=dtype, device=str(device),
                               with_tokenizer=False, console=console)
    return 1e3 * block_latency(engine, 1, context, repeats)


# What a config.json must hold for the engine to be built from it (the rest has defaults).
CONFIG_FIELDS = {"model_type": str, "vocab_size": int, "hidden_size": int,
                 "intermediate_size": int, "num_hidden_layers": int, "num_attention_heads": int}


def read_config(folder: Path) -> EngineConfig:
    """The engine's config from a model folder's config.json, checked: a garbled or incomplete
    file is one line naming it."""
    path = folder / "config.json"
    cfg = checked(read_json(path, ModelLoadError), {"model_type": str}, str(path), ModelLoadError)
    if cfg["model_type"] in SUPPORTED_MODEL_TYPES:     # others: from_hf says it is unsupported
        checked(cfg, CONFIG_FIELDS, str(path), ModelLoadError)
    return EngineConfig.from_hf(cfg)


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a folder, looked for as `from_pretrained` does: an index, then a
    single file, safetensors first.

    The index's weight_map names exactly the shards; the `*.safetensors` glob is a last resort,
    since folders also hold other weights (medusa_lm_head.safetensors, consolidated.safetensors).
    """
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = checked(read_json(folder / index, ModelLoadError), {"weight_map": dict},
                                 str(folder / index), ModelLoadError)["weight_map"]
            files = [folder / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise ModelLoadError(f"{folder}: {index} names missing files {absent[:5]}")
            if not files:
                raise ModelLoadError(f"{folder}: {index} names no files")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return files


Reader = Callable[[torch.dtype, torch.device], torch.Tensor]


def checkpoint_tensors(file: Path, mmap: bool) -> Iterator[tuple[str, tuple[int, ...], Reader]]:
    """(name, shape, read) per tensor; `read(dtype, device)` returns it converted. Names and
    shapes come first so that skipped or misshapen tensors are never read. With `mmap`, a tensor
    already in the run dtype on the CPU stays the file's own pages (see load_engine)."""
    if file.suffix == ".safetensors":
        yield from safetensors_tensors(file, mmap)
        return
    # Legacy pickles: torch.load maps the file and each tensor is converted (or kept) alone,
    # but the pages read stay resident until the whole file is done.
    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # not a zip-format torch.save file, or not only tensors
        raise ModelLoadError(f"{file}: does not load: {str(err).splitlines()[0]}") from None
    for name, t in state.items():
        def read(dtype, device, t=t):
            out = to_run(t, dtype, device)
            return out.clone() if out is t and not mmap else out
        yield name, tuple(t.shape), read


def safetensors_tensors(file: Path, mmap: bool) -> Iterator[tuple[str, tuple[int, ...], Reader]]:
    """Our own reader of the format (8-byte header length, JSON header, raw bytes) that maps one
    tensor at a time: a converted tensor's pages leave the process as soon as it is converted,
    where safetensors' whole-file map keeps every page read resident until the file is done
    (a single-file checkpoint converted to fp32 would peak at 3x its size instead of 2x)."""
    header, base, size = safetensors_header(file)
    with open(file, "rb") as f:
        # In file order, so the disk reads sequentially.
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):

            def read(dtype, device, name=name, info=info):
                kinds = STORED_DTYPES if dtype.is_floating_point else MAP_DTYPES
                stored = kinds.get(info["dtype"])
                if stored is None:
                    raise ModelLoadError(f"{file}: tensor {name} is stored as {info['dtype']}; "
                                         f"supported: {', '.join(kinds)}")
                start, end = (base + offset for offset in info["data_offsets"])
                shape, numel = info["shape"], math.prod(info["shape"])
                if numel * stored.itemsize != end - start:
                    raise ModelLoadError(f"{file}: tensor {name}: bytes [{start}, {end}) of "
                                         f"{size} do not hold {info['dtype']} {shape}")
                if numel == 0:
                    return torch.empty(shape, dtype=dtype, device=device)
                t = file_view(f, start, end, stored).view(shape)
                out = to_run(t, dtype, device)
                # Kept, the tensor is the map (misaligned data is copied all the same); copied,
                # the map and its pages go with the last reference to `t`.
                keep = mmap and start % stored.itemsize == 0
                return out.clone() if out is t and not keep else out

            yield name, tuple(info["shape"]), read


def safetensors_header(file: Path) -> tuple[dict, int, int]:
    """The tensors' entries of a safetensors file, where their bytes start, and the file's size;
    checked whole before any tensor is read, so a truncated or garbled file is one line."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        try:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len <= size - 8:
                raise ValueError
            header = json.loads(f.read(header_len))
            if not isinstance(header, dict):
                raise ValueError
        except ValueError:
            raise ModelLoadError(f"{file}: not a safetensors file (bad header)") from None
    header.pop("__metadata__", None)
    for name, info in header.items():
        checked(info, TENSOR_FIELDS, f"{file}: tensor {name}", ModelLoadError)
        start, end = (info["data_offsets"] + [None, None])[:2]
        if not (all(isinstance(d, int) and d >= 0 for d in info["shape"])
                and isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ModelLoadError(f"{file}: tensor {name}: bad shape or offsets in the header")
    base = 8 + header_len
    data_end = base + max((info["data_offsets"][1] for info in header.values()), default=0)
    if data_end > size:
        raise ModelLoadError(f"{file}: truncated: its header describes {data_end} bytes, the "
                             f"file has {size}; download or convert it again")
    return header, base, size


TENSOR_FIELDS = {"dtype": str, "shape": list, "data_offsets": list}


def file_view(f, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
    """Bytes [start, end) of an open file as a 1-D tensor over a private map of them, which
    lives as long as the tensor. Copy-on-write (ACCESS_COPY): torch wants a writable buffer, and
    a write must never reach the file."""
    page = start - start % mmap_module.ALLOCATIONGRANULARITY
    mapped = mmap_module.mmap(f.fileno(), end - page, offset=page, access=mmap_module.ACCESS_COPY)
    return torch.frombuffer(mapped, dtype=dtype, count=(end - start) // dtype.itemsize,
                            offset=start - page)


def to_run(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Cast and move, crossing to the device in the narrower of the two dtypes. Returns `t`
    itself when it is already right."""
    if t.element_size() > dtype.itemsize:
        return t.to(dtype).to(device)
    return t.to(device).to(dtype)


def load_state(module: nn.Module, files: list[Path], what: str, error=None,
               dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu"),
               mmap: bool = False, skip: Callable[[str], bool] = lambda name: False,
               convert: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, t: t,
               hint: str = "") -> None:
    """Fill every parameter of `module` (meta or real) from checkpoint files, strictly, tensor
    by tensor: each is read once, in `dtype` on `device`, after its name and shape were checked,
    so peak memory is about the module's size. The one loader of the engine, Kangaroo adapters,
    Medusa heads and drafters. Raises `error` (default ModelLoadError) naming what is `what`,
    the missing and unexpected keys and the first misshapen tensor (`hint` appended)."""
    error = error or ModelLoadError
    slots = {f"{prefix}.{name}".lstrip("."): (sub, name) for prefix, sub in module.named_modules()
             for name, p in sub._parameters.items() if p is not None}
    seen, unexpected = set(), []
    for file in files:
        for name, shape, read in checkpoint_tensors(file, mmap):
            if skip(name):
                continue
            if name not in slots:
                unexpected.append(name)
                continue
            sub, param = slots[name]
            want = tuple(sub._parameters[param].shape)
            if shape != want:
                raise error(f"{what}: tensor {name} has shape {shape}, needs {want}{hint}")
            sub._parameters[param] = nn.Parameter(convert(name, read(dtype, device)),
                                                  requires_grad=False)
            seen.add(name)
    missing = [name for name in slots if name not in seen]
    if missing or unexpected:
        raise error(f"{what}: missing keys {missing[:5] or 'none'}, unexpected keys "
                    f"{unexpected[:5] or 'none'}{hint}")


def load_weights(engine: Engine, files: list[Path], dtype: torch.dtype, device: torch.device,
                 mmap: bool = True):
    """Fill the engine's meta parameters (load_state) in the run dtype on the run device."""
    tied = engine.config.tie_word_embeddings
    if tied:
        engine.lm_head.weight = None      # the embedding, tied below: not a slot of its own
    # A tied head is the embedding; HF's rotary buffers are recomputed by the engine.
    load_state(engine, files, f"{files[0].parent}: weights do not fit the config", dtype=dtype,
               device=device, mmap=mmap,
               skip=lambda name: (tied and name == "lm_head.weight") or "rotary_emb" in name)
    if tied:
        engine.lm_head.weight = engine.model.embed_tokens.weight


def load_engine(folder: str | Path, dtype: str | None = None, device: str | None = None,
                with_tokenizer: bool = True, mmap: bool = True, console=None,
                pack: bool | None = None, compile: bool = False):
    """Return (engine, tokenizer or None, folder).

    Weights already in the run dtype, run on the CPU, are mapped from the files (`mmap`), as
    `from_pretrained` does: loading is instant, pages are read on first use and shared with the
    page cache (and other processes), and peak memory is the model's size. The files must then
    not change while the engine lives; `mmap=False` copies them instead. Every other tensor is
    converted (or moved) one at a time, so the peak stays near the run size
    (benchmarks/load_memory.py). Then, on a CPU, the weights move into one huge-page buffer in
    the order a step reads them (engine/arena.py; `pack`: None = where they fit in a third of
    the free memory, as the decoding speed is worth a copy; False keeps them where they are).
    `compile`: blocks of up to 128 tokens run as compiled static shapes (engine/static.py)
    instead of eagerly (or through the fused C step on a CPU).
    """
    folder = Path(folder)      # names, GGUF files and hub ids: targets.model_folder first
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not a model folder (no config.json)")
    cfg = read_config(folder)
    dev = resolve_device(device)
    run_dtype, why = choose_dtype(dtype, dev, folder, console)
    files = checkpoint_files(folder)
    # Parameters without storage, and no random init: every one is about to be replaced.
    with torch.device("meta"), no_init():
        engine = Engine(cfg)
    load_weights(engine, files, run_dtype, dev, mmap)
    engine.eval()
    engine.fuse_projections()
    arena = pack_weights(engine, pack)
    choose_kernels(engine, console)
    if compile:
        from .static import StaticLayers     # torch.compile's machinery only for --compile
        engine.static = StaticLayers(engine)
        fused = {"used": False, "why": "--compile: static shapes", "rows": {}}
    else:
        fused = choose_fused(engine, engine.kernel_choice["machine"])
    engine.kernel_choice.update(fused=fused, arena=arena)
    engine.dtype_choice = why       # how the dtype was chosen (`specbench profile` prints it)
    return engine, load_tokenizer(folder) if with_tokenizer else None, folder


@contextmanager
def no_init():
    """Make torch.nn.init's in-place initialisers no-ops for a while. On the meta device they
    are wasted work, and meta `normal_` (nn.Embedding's init) alone imports torch's Python meta
    kernels and sympy: ~1.3 s and ~75 MB resident. Not thread-safe (as transformers' own)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer    # seconds to import; engines load without it
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise ModelLoadError(f"{folder}: tokenizer does not load: {str(err).splitlines()[0]}") \
            from None
