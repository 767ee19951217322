"""The matrix-product kernels the engine chooses by measurement (engine/kernels.py)."""

import json

import pytest
import torch
import torch.nn.functional as F

from specbench_cli.engine import kernels
from specbench_cli.engine.llama import Linear
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS

needs_gemv = pytest.mark.skipif(kernels.cpu_library() is None,
                                reason=f"cpu.c does not build here: {kernels._LIB.get('why')}")


def linear(n, k, bias, dtype, seed=0):
    torch.manual_seed(seed)
    lin = Linear(k, n, bias=bias).to(dtype)
    lin.requires_grad_(False)
    return lin


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_gemv_equals_the_plain_product(dtype, bias, rows):
    # 19 outputs (two blocks of 8 and a tail), 45 inputs (five vectors of 8 and a tail)
    lin = linear(19, 45, bias, dtype)
    x = torch.randn(rows, 45, dtype=dtype)
    want = F.linear(x.float(), lin.weight.float(), None if lin.bias is None else lin.bias.float())
    got = kernels.bind_gemv(lin)(x)
    assert got.dtype == dtype and got.shape == (rows, 19)
    # fp32: only the summation order differs; bf16: one rounding of the fp32 sum
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(got.float(), want, atol=tol, rtol=tol)
    if dtype == torch.bfloat16:
        assert torch.equal(got, want.to(dtype))


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_instruction_set_computes_the_same_products(dtype):
    """cpu.c's AVX2 kernels (any x86 CPU), AVX-512 ones and AVX512-BF16 dot products (where the
    CPU has them) give the same fp32 sums up to summation order."""
    lib = kernels.cpu_library()
    lin = linear(40, 100, True, dtype)
    x = torch.randn(3, 100, dtype=dtype)
    fn = lib.gemv_f32 if dtype == torch.float32 else lib.gemv_bf16
    outs = []
    try:
        for level in range(kernels.isa_level() + 1):
            lib.set_isa(level)
            out = torch.empty(3, 40, dtype=dtype)
            assert fn(x.data_ptr(), lin.weight.data_ptr(), lin.bias.data_ptr(), out.data_ptr(),
                      3, 40, 100) == 0
            outs.append(out.float())
    finally:
        lib.set_isa(kernels.isa_level())
    want = F.linear(x.float(), lin.weight.float(), lin.bias.float())
    for out in outs:
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(out, want, rtol=tol, atol=tol)
    if dtype == torch.bfloat16:      # one rounding of nearly the same sum: rarely a last bit apart
        assert all((o != outs[0]).float().mean() < 0.05 for o in outs)


@needs_gemv
def test_gemv_takes_any_block_and_refuses_none():
    lin = linear(8, 16, False, torch.float32)
    out = torch.empty(1, 8)
    rc = kernels.cpu_library().gemv_f32(torch.ones(1, 16).data_ptr(), lin.weight.data_ptr(), 0,
                                        out.data_ptr(), 0, 8, 16)
    assert rc == -1
    assert kernels.applies("gemv", lin, 64)
    x = torch.randn(19, 16)          # two tiles of 8 rows and a tail of 3
    assert torch.allclose(kernels.bind_gemv(lin)(x), F.linear(x, lin.weight), atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_onednn_packed_equals_the_plain_product(rows):
    lin = linear(40, 24, True, torch.float32)
    kernels.pack([lin])
    x = torch.randn(rows, 24)
    assert torch.allclose(kernels.bind_onednn(lin)(x), F.linear(x, lin.weight, lin.bias), atol=1e-5)


def test_the_kernel_table_is_indexed_by_rows():
    """A block of n rows runs the kernel of the smallest bucket ≥ n; larger than the last
    bucket, the last one's. Under autograd the product is always F.linear."""
    lin = linear(6, 4, False, torch.float32)
    calls = []

    def tagged(name):
        def run(x):
            calls.append((name, x.shape[1]))
            return F.linear(x, lin.weight)
        return run

    lin.kernels = tuple(tagged(f"b{kernels.bucket_of(r)}") for r in range(65))
    object.__setattr__(lin, "kernel_weight", lin.weight)
    with torch.no_grad():
        for rows in (1, 3, 9, 64, 100):
            assert lin(torch.ones(1, rows, 4)).shape == (1, rows, 6)
    assert calls == [("b1", 1), ("b4", 3), ("b16", 9), ("b64", 64), ("b64", 100)]
    calls.clear()
    lin.requires_grad_(True)
    lin(torch.ones(1, 2, 4)).sum().backward()
    assert calls == [] and lin.weight.grad is not None


def test_choices_are_measured_once_then_read_from_the_cache(tiny_model_dir, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    monkeypatch.delenv(kernels.ENV, raising=False)          # timed, whatever the session forces
    engine, _, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu",
                               with_tokenizer=False)
    first = engine.kernel_choice
    assert not first["cached"]
    stored = json.loads((tmp_path / "kernels" / "choices.json").read_text())
    (entry, groups), = stored.items()
    assert entry.startswith(kernels.machine_key(engine.device))
    # every product a forward runs has a choice at every bucket, with the times it was chosen by
    assert set(groups) == set(kernels.linear_groups(engine))
    for buckets in groups.values():
        assert [int(b) for b in buckets] == list(kernels.BUCKETS)
        for choice in buckets.values():
            assert choice["kernel"] in kernels.KERNELS
            if choice["ms"]:
                # (times are stored rounded to 1 µs)
                assert choice["kernel"] == "aten" or choice["ms"][choice["kernel"]] <= \
                    (1 - kernels.MIN_GAIN) * choice["ms"]["aten"] + 1e-3
    again, _, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu",
                              with_tokenizer=False)
    assert again.kernel_choice["cached"] and again.kernel_choice["groups"] == first["groups"]


def test_a_bad_kernel_mode_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(kernels.ENV, "fastest")
    with pytest.raises(SpecbenchError, match="SPECBENCH_KERNELS='fastest': choose auto, aten"):
        load_engine(str(tiny_model_dir), dtype="fp32", device="cpu", with_tokenizer=False)


def test_every_kernel_mode_keeps_greedy_tokens(tiny_model_dir, tmp_path, monkeypatch):
    """Forced to each kernel (where it does not apply, F.linear), vanilla's tokens are the same
    and prompt lookup still equals vanilla (fp32; in bf16 a block's products may round a logit
    apart from a one-token step's, the near-ties the report separates)."""
    dtype = "fp32"
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    prompt = list(range(3, 60))
    runs = {}
    for mode in ("aten", "gemv", "onednn", "auto"):
        monkeypatch.setenv(kernels.ENV, mode)
        engine, _, _ = load_engine(str(tiny_model_dir), dtype=dtype, device="cpu",
                                   with_tokenizer=False)
        used = {c["kernel"] for b in engine.kernel_choice["groups"].values() for c in b.values()}
        assert used <= ({"aten", mode} if mode != "auto" else set(kernels.KERNELS))
        with torch.inference_mode():
            runs[mode] = {name: METHODS[name](engine, {2}).generate(prompt, 40).tokens
                          for name in ("vanilla", "pld")}
        assert runs[mode]["pld"] == runs[mode]["vanilla"], mode
    assert all(r["vanilla"] == runs["aten"]["vanilla"] for r in runs.values())


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_rows_do_not_depend_on_the_block(dtype):
    """Each row is the same dot products in the same order whatever the block's size: where
    gemv runs both a one-token step and a verification block, their logits are bit-equal."""
    lin = linear(33, 70, True, dtype)
    x = torch.randn(8, 70, dtype=dtype)
    block = kernels.bind_gemv(lin)(x)
    for r in range(8):
        assert torch.equal(kernels.bind_gemv(lin)(x[r:r + 1]), block[r:r + 1])


def test_fused_projections_keep_names_parameters_and_outputs(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(kernels.ENV, "aten")
    engine, _, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu",
                               with_tokenizer=False)
    attn = engine.model.layers[0].self_attn
    assert attn.qkv_proj is not None and "qkv_proj" not in dict(engine.named_modules())
    names = set(engine.state_dict())
    assert not any("qkv" in n or "gate_up" in n for n in names)
    # the parts are views of the fused weight: no memory added, the count unchanged
    assert attn.k_proj.weight.data_ptr() == attn.qkv_proj.weight[attn.q_proj.out_features:]\
        .data_ptr()
    cache = engine.cache(64)
    ids = torch.arange(3, 20)[None]
    with torch.inference_mode():
        fused = engine(ids, cache, 0)
        for layer in engine.model.layers:      # unfused: the parts one by one
            layer.self_attn.qkv_proj = layer.mlp.gate_up_proj = None
        cache.reset()
        parts = engine(ids, cache, 0)
    assert torch.allclose(fused, parts, atol=1e-5)
