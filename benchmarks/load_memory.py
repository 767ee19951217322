"""Checkpoint loading: peak host memory and time, the engine's `load_engine` vs transformers'
`from_pretrained`, side by side on the same sharded fp16 checkpoint.

A Qwen2.5-0.5B-shaped Llama-family model (~0.49B parameters, tied embeddings) with random fp16
weights is generated once into --dir, sharded into safetensors files with an index.json. Every
load runs in a fresh subprocess, so its peak is the loader's alone; the child reports its RSS
after imports (before loading), its peak RSS (VmHWM) after loading, the load's seconds, then
reads every weight once (what a first forward does: mapped weights are only read then) and
reports the peak and seconds again. Loaders: `engine` (load_engine: weights in the stored dtype
stay mapped from the files), `engine-copy` (load_engine(mmap=False): copied into the process)
and `transformers` (AutoModelForCausalLM.from_pretrained). Repeats alternate the loaders, in
rotated order; the table shows medians. The files are read once, untimed, first, so every load
reads from the page cache. Run dtype fp16 equals the stored dtype; fp32 (an upcast while
loading) is for information.

    .venv/bin/python benchmarks/load_memory.py [--repeats 3] [--dir benchmarks/out/load_memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
              max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
              tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
              hidden_act="silu", architectures=["Qwen2ForCausalLM"], torch_dtype="float16")
SHARD_BYTES = 400 * 2**20
LOADERS = ("engine", "engine-copy", "transformers")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "out" / "load_memory")
    parser.add_argument("--dtypes", default="fp16,fp32", help="run dtypes (stored: fp16)")
    parser.add_argument("--child", choices=LOADERS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp16", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.folder, args.dtype)
    folder = args.dir / "qwen2-0.5b-fp16"
    files = checkpoint(folder)
    size = sum(f.stat().st_size for f in files)
    for f in files:                    # warm the page cache, untimed
        with open(f, "rb") as handle:
            while handle.read(64 * 2**20):
                pass
    results = {}
    for repeat in range(args.repeats):
        for dtype in args.dtypes.split(","):
            # Rotated each repeat: a process that follows one which freed much memory gets its
            # pages faster (on this VM up to 2x), so no loader may always come first.
            for loader in LOADERS[repeat % 3:] + LOADERS[:repeat % 3]:
                out = subprocess.run([sys.executable, __file__, "--child", loader, "--folder",
                                      str(folder), "--dtype", dtype], check=True,
                                     capture_output=True, text=True).stdout
                results.setdefault((loader, dtype), []).append(json.loads(out.splitlines()[-1]))
    params = results[next(iter(results))][0]["params"]
    print(f"checkpoint: {folder} ({len(files)} shards, {size:,} bytes = {size / 2**20:.0f} MiB "
          f"fp16, {params / 1e9:.3f}B parameters); "
          f"medians of {args.repeats} fresh processes. MiB: RSS after imports, peak RSS after "
          "loading, peak after reading every weight once; seconds: load, then that read")
    head = (f"{'loader':>12} {'run':>4} {'imports':>7} {'loaded':>7} {'peak':>6} "
            f"{'(peak-imports)/file':>19} {'peak/file':>9} {'load s':>7} {'+read s':>7}")
    print(head)
    print("-" * len(head))
    for (loader, dtype), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs)
               for k in ("imports", "loaded", "peak", "seconds", "touch")}
        each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(f"{loader:>12} {dtype:>4} {med['imports'] / 2**20:7.0f} {med['loaded'] / 2**20:7.0f} "
              f"{med['peak'] / 2**20:6.0f} {(med['peak'] - med['imports']) / size:19.2f} "
              f"{med['peak'] / size:9.2f} {med['seconds']:7.2f} {med['touch']:7.2f}"
              f"   (load s: {each})")


def checkpoint(folder: Path) -> list[Path]:
    """Generate the checkpoint unless it is already there; return its weight files."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if all((folder / n).is_file() for n in names):
            return [folder / n for n in names]
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    print(f"generating {folder} …", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.for_model(**CONFIG)
    with torch.device("meta"):          # names and shapes only
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(config).state_dict()
                  .items() if k != "lm_head.weight"}    # tied: saved once, as the embedding
    gen = torch.Generator().manual_seed(0)
    shards, shard, weight_map = [], {}, {}
    for name, shape in shapes.items():
        if sum(t.nbytes for t in shard.values()) + shape.numel() * 2 > SHARD_BYTES and shard:
            shards.append(shard)
            shard = {}
        t = torch.ones(shape) if name.endswith("norm.weight") else \
            torch.randn(shape, generator=gen) * 0.02
        shard[name] = t.half()
    shards.append(shard)
    files = []
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        files.append(folder / name)
    total = sum(t.nbytes for s in shards for t in s.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                indent=2))
    config.save_pretrained(folder)
    return files


def child(loader: str, folder: Path, dtype: str):
    """One load in this fresh process, then one read of every weight; prints a JSON line."""
    import torch
    from specbench_cli.engine.load import DTYPES, load_engine
    if loader.startswith("engine"):
        load = lambda: load_engine(str(folder), dtype=dtype, device="cpu",  # noqa: E731
                                   with_tokenizer=False, mmap=loader == "engine")[0]
    else:
        from transformers import AutoConfig, AutoModelForCausalLM
        # Import the model's module now, so the import is not counted as loading.
        AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(folder))]
        load = lambda: AutoModelForCausalLM.from_pretrained(  # noqa: E731
            str(folder), dtype=DTYPES[dtype])
    imports = memory()["VmRSS"]
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    loaded = memory()["VmHWM"]
    params = {p.data_ptr(): p for p in model.parameters()}.values()
    assert all(p.dtype == DTYPES[dtype] and p.device.type == "cpu" for p in params)
    # Mapped weights are read on first use: one element of every 4 KiB page, as a first forward
    # would read them all.
    start = time.perf_counter()
    with torch.no_grad():
        for p in params:
            (p if p.is_contiguous() else p.t()).reshape(-1)[::4096 // p.element_size()].float().sum()
    print(json.dumps({"imports": imports, "loaded": loaded, "peak": memory()["VmHWM"],
                      "seconds": seconds, "touch": time.perf_counter() - start,
                      "params": sum(p.numel() for p in params)}))


def memory() -> dict[str, int]:
    """This process's current (VmRSS) and peak (VmHWM) resident bytes. VmHWM belongs to this
    process's own address space, unlike ru_maxrss, which exec inherits from the parent."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
