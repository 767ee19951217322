"""llama.cpp, the engine a CPU user deploys: its tools and its server built from the source vendored
in the package index's `llama-cpp-python` sdist (offline but for the index), our GGUF files in
the layouts it reads, and `llama-server` processes started on free local ports. Used by
benchmarks/vs_llamacpp.py and by the live-server test of endpoint rows (tests/test_llama_server.py,
run by .ci/run); `specbench run --endpoint` itself talks to any server over HTTP.

The build is cached under $SPECBENCH_HOME/llamacpp, once per set of instruction sets: a
`-DGGML_NATIVE=ON` build can die with an illegal instruction on a VM whose hypervisor hides some
of them, so every ISA flag is switched on only where /proc/cpuinfo lists it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from .engine.kernels import cpu_flags
from .files import specbench_home

SDIST = "llama-cpp-python==0.3.36"
TOOLS = ("llama-bench", "llama-lookup", "llama-server")
# /proc/cpuinfo flag → ggml's CMake option; every flag is switched on only where the CPU has it.
ISA_OPTIONS = {"avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C",
               "bmi2": "GGML_BMI2", "avx512f": "GGML_AVX512", "avx512vbmi": "GGML_AVX512_VBMI",
               "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16",
               "avx_vnni": "GGML_AVX_VNNI"}


def say(text: str):
    print(text, file=sys.stderr, flush=True)


def cache_root() -> Path:
    return specbench_home() / "llamacpp"


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
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=ON",
                 # the server's web UI step would download its assets
                 "-DLLAMA_USE_PREBUILT_UI=OFF", *options]
    steps = [configure, ["cmake", "--build", str(build), "-j", str(jobs), "--target", *TOOLS]]
    log = root / f"build-{tag}.log"
    with open(log, "w") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                say(f"llama.cpp not built: `{' '.join(step[:3])} …` failed; see {log}")
                return None
    return build / "bin"


def same_bytes_gguf(quantized: Path, root: Path, outtype: str) -> Path:
    """The quantized file's own tensors dequantized and written back as f32 or bf16, every metadata
    key kept: the very weights our engine loads (transformers dequantizes the same blocks), in the
    layout llama.cpp reads, so that both engines read the same bytes a step. Written with the
    `gguf` package specbench already depends on (llama.cpp's converter would also need
    sentencepiece and the Hugging Face folder)."""
    import gguf
    out = root / "gguf" / f"{quantized.stem}-{outtype}.gguf"
    if out.is_file():
        return out
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "bf16": gguf.GGMLQuantizationType.BF16}[outtype]
    reader = gguf.GGUFReader(quantized)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    writer = gguf.GGUFWriter(partial, arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue                                   # written by GGUFWriter itself
        if field.name == gguf.Keys.General.FILE_TYPE:
            continue                                   # no longer Q4_1
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if values.ndim == 1:                           # norms stay f32, as llama.cpp keeps them
            writer.add_tensor(tensor.name, values.astype("float32"))
        else:
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(tools: Path, model: Path, *flags: str, threads: int | None = None,
                 parallel: int = 1, context: int = 4096, log: Path | None = None,
                 wait: float = 180.0):
    """A llama-server on a free localhost port, with its Prometheus counters on, stopped on the
    way out; yields its OpenAI base URL. `flags`: its own (e.g. `--spec-type ngram-simple`);
    `context` tokens for each of its `parallel` slots."""
    port = free_port()
    command = [str(tools / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port",
               str(port), "-t", str(threads or os.cpu_count()), "--parallel", str(parallel),
               "-c", str(context * parallel), "--metrics", *flags]
    out = open(log, "w") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + wait
        while not healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not start ({' '.join(command[3:])}); see "
                                   f"{log or 'its output'}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            out.close()


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False
