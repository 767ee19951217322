"""specbench's vanilla and prompt lookup against llama.cpp, the peer a CPU user would pick, side by
side on one machine and one GGUF file.

1. llama.cpp's `llama-bench`, `llama-lookup` and `llama-cli`-free tools are built from the source
   vendored in the package index's `llama-cpp-python` sdist (or taken from `--llamacpp DIR`),
   with the instruction sets this CPU reports (a `-DGGML_NATIVE=ON` build can die with an illegal
   instruction on a VM whose hypervisor hides some of them). The build is cached under
   $SPECBENCH_HOME/llamacpp.
2. Decode: llama.cpp's `tg` rate (tokens/s after a prompt of each context) against our vanilla
   one-token step at the same context (median of repeats), and block rates: llama.cpp's `pp-n`
   (n tokens in one batch) against our n-token forward.
3. Speculation: llama.cpp's prompt-lookup decoding (`llama-lookup`, greedy) against our vanilla
   and every method that needs no trained add-on (PLD, LLMA, Lookahead, Token Recycling) on the
   same official questions (`--bench`, `--limit`), and the fastest of ours that stayed exact
   against llama.cpp's plain decode.

Optional: when the build is impossible (no compiler, no cmake, no network to the index) it says
what is missing and exits 0. Never part of the unit tests.

    .venv/bin/python benchmarks/vs_llamacpp.py [--bench question.jsonl --limit 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from specbench_cli.engine.kernels import cpu_flags, cpu_name

SDIST = "llama-cpp-python==0.3.36"
TOOLS = ("llama-bench", "llama-lookup")
# /proc/cpuinfo flag → ggml's CMake option; every flag is switched on only where the CPU has it.
ISA_OPTIONS = {"avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C",
               "bmi2": "GGML_BMI2", "avx512f": "GGML_AVX512", "avx512vbmi": "GGML_AVX512_VBMI",
               "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16",
               "avx_vnni": "GGML_AVX_VNNI"}


def say(text: str):
    print(text, flush=True)


def cache_root() -> Path:
    home = os.environ.get("SPECBENCH_HOME")
    if home:
        return Path(home).expanduser() / "llamacpp"
    import platformdirs
    return Path(platformdirs.user_cache_dir("specbench")) / "llamacpp"


def build_llamacpp(root: Path, jobs: int) -> Path | None:
    """The folder holding the built tools, building them when absent; None (with the reason
    printed) when they cannot be built here."""
    flags = cpu_flags()
    options = [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for flag, opt in ISA_OPTIONS.items()]
    tag = "-".join(sorted(flag for flag in ISA_OPTIONS if flag in flags)) or "generic"
    build = root / f"build-{tag}"
    if all((build / "bin" / tool).is_file() for tool in TOOLS):
        return build / "bin"
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            say(f"llama.cpp not built: no {tool} on this machine (apt-get install cmake g++)")
            return None
    source = root / "src"
    vendored = next(source.glob("llama_cpp_python-*/vendor/llama.cpp"), None) \
        if source.is_dir() else None
    if vendored is None:
        say(f"fetching the llama.cpp source: pip download --no-binary :all: {SDIST}")
        with tempfile.TemporaryDirectory() as tmp:
            got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                  "--no-binary", ":all:", SDIST, "-d", tmp],
                                 capture_output=True, text=True)
            archives = list(Path(tmp).glob("*.tar.gz"))
            if got.returncode != 0 or not archives:
                say(f"llama.cpp not built: pip download {SDIST} failed: "
                    f"{(got.stderr or got.stdout).strip().splitlines()[-1:]}")
                return None
            source.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archives[0]) as tar:
                tar.extractall(source, filter="data")
        vendored = next(source.glob("llama_cpp_python-*/vendor/llama.cpp"))
    say(f"building llama.cpp ({', '.join(TOOLS)}) in {build} with {tag}; ~10 min on 2 cores")
    configure = ["cmake", "-S", str(vendored), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 "-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", *options]
    steps = [configure, ["cmake", "--build", str(build), "-j", str(jobs), "--target", *TOOLS]]
    log = root / f"build-{tag}.log"
    with open(log, "w") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                say(f"llama.cpp not built: `{' '.join(step[:3])} …` failed; see {log}")
                return None
    return build / "bin"


def llama_bench(tools: Path, gguf: Path, threads: int, depth: int, n: int) -> float:
    """llama.cpp's rate in tokens/s: decode (`tg`, one token a forward) when n == 1, else a
    block of n tokens in one batch (`pp n`), both after `depth` tokens of context."""
    test = ["-p", "0", "-n", "32"] if n == 1 else ["-p", str(n), "-n", "0"]
    out = subprocess.run([str(tools / "llama-bench"), "-m", str(gguf), "-t", str(threads),
                          "-d", str(depth), "-r", "3", "-o", "json", *test],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)[0]["avg_ts"])


def llama_lookup(tools: Path, gguf: Path, threads: int, prompt: str, n: int) -> dict:
    """llama.cpp's prompt-lookup decoding, greedy: decode tokens/s and draft acceptance."""
    out = subprocess.run([str(tools / "llama-lookup"), "-m", str(gguf), "-t", str(threads),
                          "-p", prompt, "-n", str(n), "--temp", "0", "--spec-draft-n-max", "10",
                          "--no-escape"], capture_output=True, text=True)
    log = out.stdout + out.stderr
    decoded = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
    if out.returncode != 0 or decoded is None:
        raise RuntimeError(f"llama-lookup failed: {log.strip().splitlines()[-1:]}")
    numbers = {k: int(v) for k, v in re.findall(r"(n_drafted|n_accept)\s+=\s+(\d+)", log)}
    return {"tokens": int(decoded[1]), "seconds": float(decoded[2]), **numbers}


def same_bytes_gguf(folder: Path, root: Path, outtype: str) -> Path | None:
    """The dequantized Hugging Face folder written back as an f32 or bf16 GGUF by llama.cpp's
    own converter, so that both engines read the same bytes a step; None when it fails."""
    out = root / "gguf" / f"{folder.name}-{outtype}.gguf"
    if out.is_file():
        return out
    script = next((root / "src").glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"),
                  None)
    if script is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(script), str(folder), "--outtype", outtype,
                           "--outfile", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        say(f"  (no {outtype} GGUF: {(done.stderr or done.stdout).strip().splitlines()[-1:]})")
        out.unlink(missing_ok=True)
        return None
    return out


def ours(folder: Path, dtype: str, depth: int, sizes, repeats: int) -> dict:
    """Our engine's rates in tokens/s at the same context: n / the n-token forward's median."""
    from specbench_cli.engine.load import load_engine
    from specbench_cli.engine.timing import block_latency
    engine, _, _ = load_engine(str(folder), dtype=dtype, device="cpu", with_tokenizer=False)
    return {n: n / block_latency(engine, n, depth, repeats) for n in sizes}


def decode_table(tools, ggufs: dict, folder: Path, threads: int, depth: int, sizes,
                 repeats: int):
    say(f"\n## decode and blocks at a {depth}-token context, {threads} threads "
        "(tokens/s; llama-bench -r 3 averages, ours medians of forwards)")
    say(f"{'engine / weights':<34}" + "".join(f"{'tg' if n == 1 else f'pp{n}':>9}" for n in sizes))
    rows = {}
    for label, gguf in ggufs.items():
        rows[f"llama.cpp {label}"] = {n: llama_bench(tools, gguf, threads, depth, n) for n in sizes}
    for dtype in ("fp32", "bf16"):
        rows[f"specbench {dtype}"] = ours(folder, dtype, depth, sizes, repeats)
    for label, rates in rows.items():
        say(f"{label:<34}" + "".join(f"{rates[n]:9.1f}" for n in sizes))
    quant = rows[f"llama.cpp {next(iter(ggufs))}"][1]
    for dtype in ("fp32", "bf16"):
        mine = rows[f"specbench {dtype}"][1]
        line = f"specbench {dtype} decode ÷ llama.cpp {next(iter(ggufs))}: {mine / quant:.2f}×"
        same = rows.get(f"llama.cpp {dtype.replace('fp32', 'f32')}")
        if same:
            line += f"; ÷ llama.cpp on the same {dtype} bytes: {mine / same[1]:.2f}×"
        say(line)
    return rows


FREE_METHODS = ("pld", "llma", "lookahead", "recycling")    # lossless, no trained add-on


def lookup_table(tools, gguf: Path, folder: Path, threads: int, bench: Path, limit: int,
                 max_new: int, plain_rate: float):
    """llama.cpp's lookup against our add-on-free methods and vanilla on the first `limit`
    questions of each of two long-input subtasks (summarization, RAG: where lookup has something
    to copy), and the fastest of ours that stayed exact against llama.cpp's plain decode."""
    import time

    import torch

    from specbench_cli.engine.load import DTYPE_NAMES, load_engine
    from specbench_cli.methods import METHODS
    from specbench_cli.bench.prompts import build_prompt_ids
    from specbench_cli.run.runner import eos_token_ids
    from specbench_cli.bench.questions import load_questions, select
    engine, tokenizer, _ = load_engine(str(folder), device="cpu")
    eos = eos_token_ids(engine, tokenizer)
    questions = select(load_questions(bench), ["summarization", "rag"], limit)
    names = ("vanilla",) + FREE_METHODS
    say(f"\n## speculation on {len(questions)} official questions (summarization, RAG), greedy, "
        f"≤{max_new} new tokens; specbench in {DTYPE_NAMES[engine.dtype]} "
        f"({engine.dtype_choice}); tokens/s")
    say(f"{'question':<10}{'llama.cpp lookup':>17}{'accept':>8}"
        + "".join(f"{n:>11}" for n in names))
    rates = {n: [] for n in names}
    equal = {n: 0 for n in names}
    for q in questions:
        ids = build_prompt_ids(tokenizer, "chat", [q.turns[0]], [])
        theirs = llama_lookup(tools, gguf, threads, tokenizer.decode(ids), max_new)
        tokens = {}
        for name in names:
            method = METHODS[name](engine, eos, tokenizer)
            with torch.inference_mode():
                method.generate(ids[:64], 8)            # warm-up (caches, first-call costs)
                start = time.perf_counter()
                gen = method.generate(ids, max_new)
                rates[name].append(len(gen.tokens) / (time.perf_counter() - start))
            tokens[name] = gen.tokens
            equal[name] += tokens[name] == tokens["vanilla"]
        accept = theirs.get("n_accept", 0) / max(theirs.get("n_drafted", 0), 1)
        say(f"{q.question_id:<10}{theirs['tokens'] / theirs['seconds']:17.1f}{100 * accept:7.0f}%"
            + "".join(f"{rates[n][-1]:11.1f}" for n in names))
    say(f"{'median':<10}{'':>25}" + "".join(f"{statistics.median(rates[n]):11.1f}" for n in names))
    say("equal to vanilla: " + ", ".join(f"{n} {equal[n]}/{len(questions)}" for n in names[1:]))
    exact = [n for n in names if equal[n] == len(questions)]
    best = max(exact, key=lambda n: statistics.median(rates[n]))
    ratio = statistics.median(rates[best]) / plain_rate
    say(f"fastest exact specbench method: {best}, median {statistics.median(rates[best]):.1f} "
        f"tokens/s = {ratio:.2f}× llama.cpp's plain decode (tg {plain_rate:.1f} tokens/s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamacpp", type=Path, help="A folder with llama-bench and "
                        "llama-lookup already built (default: build them, cached).")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--sizes", default="1,2,4,16", help="block sizes (1 = decode)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--bench", type=Path, help="Spec-Bench's question.jsonl: adds llama.cpp's "
                        "lookup against our PLD on its questions")
    parser.add_argument("--limit", type=int, default=2, help="questions per subtask (--bench)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    root = cache_root()
    tools = args.llamacpp or build_llamacpp(root, args.threads)
    if tools is None or args.build_only:
        return
    import torch

    from specbench_cli.models.targets import TARGETS, fetch_gguf, target_folder
    torch.set_num_threads(args.threads)
    quantized = fetch_gguf(TARGETS["smollm2"])
    folder = target_folder("smollm2")
    say(f"llama.cpp tools: {tools}\nCPU: {cpu_name()}; model: {quantized.name} "
        f"(ours: its dequantized weights, {folder})")
    ggufs = {"Q4_1": quantized}
    for outtype in ("f32", "bf16"):
        same = same_bytes_gguf(folder, root, outtype)
        if same:
            ggufs[outtype] = same
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = decode_table(tools, ggufs, folder, args.threads, args.context, sizes, args.repeats)
    if args.bench:
        lookup_table(tools, quantized, folder, args.threads, args.bench, args.limit,
                     args.max_new_tokens, rows["llama.cpp Q4_1"][1])


if __name__ == "__main__":
    main()
