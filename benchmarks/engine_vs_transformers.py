"""Engine vanilla decoding vs transformers' `generate` (greedy), side by side in one process.

Same model (a random ~100M Llama, or --model: any folder, .gguf or named target such as
smollm2), same random prompts, same device and dtype. Each repeat times
every prompt with both, alternating, so machine drift hits both alike; the report is the median
over repeats of total new tokens / total seconds, and the ratio engine / transformers.

    .venv/bin/python benchmarks/engine_vs_transformers.py [--repeats 5] [--new-tokens 64]
        [--model smollm2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from specbench_cli.engine.load import load_engine
from specbench_cli.models.targets import model_folder
from specbench_cli.methods import METHODS

CONFIG = dict(vocab_size=32000, hidden_size=640, intermediate_size=1728, num_hidden_layers=12,
              num_attention_heads=10, num_key_value_heads=10, max_position_embeddings=2048,
              bos_token_id=1, eos_token_id=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-lengths", default="300,450,600")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model:
        folder = model_folder(args.model)
    else:
        folder = Path(tempfile.mkdtemp()) / "llama-100m"
        AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG)).save_pretrained(folder)
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(args.device)
    ref.eval()
    engine, _, _ = load_engine(str(folder), dtype="fp32", device=args.device, with_tokenizer=False)
    vanilla = METHODS["vanilla"](engine, set())
    vocab = engine.config.vocab_size
    prompts = [torch.randint(3, vocab, (n,)).tolist() for n in map(int, args.prompt_lengths.split(","))]
    n = args.new_tokens

    def run_engine(ids):
        with torch.inference_mode():
            return vanilla.generate(ids, n).tokens

    def run_hf(ids):
        with torch.inference_mode():
            out = ref.generate(torch.tensor([ids], device=args.device), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, pad_token_id=0)
        return out[0, len(ids):].tolist()

    for ids in prompts[:1]:           # warm-up both, and check they agree
        assert run_engine(ids) == run_hf(ids), "engine and transformers disagree"
    rates = {"engine": [], "transformers": []}
    for _ in range(args.repeats):
        totals = {"engine": 0.0, "transformers": 0.0}
        for ids in prompts:
            for name, fn in (("engine", run_engine), ("transformers", run_hf)):
                sync(args.device)
                start = time.perf_counter()
                fn(ids)
                sync(args.device)
                totals[name] += time.perf_counter() - start
        for name, seconds in totals.items():
            rates[name].append(n * len(prompts) / seconds)
    med = {k: statistics.median(v) for k, v in rates.items()}
    params = engine.num_parameters()
    print(f"model: {args.model or 'random Llama'}, {params / 1e6:.1f}M parameters, fp32 on {args.device} "
          f"({torch.get_num_threads()} threads); prompts {args.prompt_lengths} tokens; "
          f"{n} new tokens each; median of {args.repeats} repeats")
    print(f"{'engine vanilla':>22}: {med['engine']:8.2f} tokens/s  "
          f"(repeats: {', '.join(f'{r:.1f}' for r in rates['engine'])})")
    print(f"{'transformers generate':>22}: {med['transformers']:8.2f} tokens/s  "
          f"(repeats: {', '.join(f'{r:.1f}' for r in rates['transformers'])})")
    print(f"{'ratio engine/hf':>22}: {med['engine'] / med['transformers']:8.3f}")


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
