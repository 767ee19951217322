"""cpu.c's register-tiled products: every block of 1 to 64 rows goes through the same bit-exact
arithmetic, whatever tile a row lands in (engine/cpu.c, engine/fused.py)."""

import os

import pytest
import torch
import torch.nn.functional as F

from conftest import make_model_folder
from specbench_cli.engine import kernels
from specbench_cli.engine.fused import (AMX_ENV, FUSED_ENV, MAX_BLOCK, MAX_ROWS, can_use_amx,
                                        library)
from specbench_cli.engine.llama import Linear
from specbench_cli.engine.load import load_engine

pytestmark = pytest.mark.skipif(kernels.cpu_library() is None,
                                reason=f"cpu.c does not build here: {kernels._LIB.get('why')}")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def paths():
    """cpu.c's product paths this CPU runs, as (instruction set, AMX): AVX2, AVX-512,
    AVX512-BF16 (kernels.isa_level), and at that level AMX tiles for bf16 where the CPU has them
    (SPECBENCH_AMX=on)."""
    lib = library()
    found = [(level, 0) for level in range(kernels.isa_level() + 1)]
    was = lib.uses_amx()
    lib.set_isa(kernels.isa_level())
    lib.set_amx(1)
    if lib.uses_amx():
        found.append((kernels.isa_level(), 1))
    lib.set_amx(was)
    return found


@pytest.fixture
def use_path():
    """Sets cpu.c's product path for a test body; the CPU's own (and AMX as it was) afterwards."""
    lib = library()
    was = lib.uses_amx()

    def use(path):
        level, amx = path
        lib.set_isa(level)
        lib.set_amx(amx)
    yield use
    lib.set_isa(kernels.isa_level())
    lib.set_amx(was)


def product(x, w, bias):
    """cpu.c's product with fp32 outputs (the engine's logits, the fused step's products)."""
    out = torch.empty(x.shape[0], w.shape[0])
    rc = library().product_f32_out(x.data_ptr(), w.data_ptr(), bias.data_ptr(), out.data_ptr(),
                                   x.shape[0], w.shape[0], w.shape[1],
                                   int(w.dtype == torch.bfloat16))
    assert rc == 0
    return out


# n: fewer weight rows than one group (4 on the vector paths, 16 on AMX), a group and a part,
# several groups and a part; k: a tail after whole chunks (fp32 16 or 8 a chunk, bf16 32 or 8),
# only a tail, or whole chunks (AMX takes only those: k a multiple of 32)
@pytest.mark.parametrize("n, k", [(3, 203), (6, 45), (37, 203), (37, 7), (3, 64), (37, 160)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_an_output_is_the_same_bits_in_any_tile(dtype, n, k, use_path):
    """Each row of a 64-row block, alone, in every leading block 1..64, and with the rows in
    another order (so in other tiles, at other places in them), and each weight row alone: the
    same bits, on every instruction set; and the product's value (fp32 sums, any order)."""
    gen = torch.Generator().manual_seed(n * k)
    x = torch.randn(MAX_ROWS, k, generator=gen).to(DTYPES[dtype])
    w = torch.randn(n, k, generator=gen).to(DTYPES[dtype])
    bias = torch.randn(n, generator=gen).to(DTYPES[dtype])
    want = F.linear(x.float(), w.float(), bias.float())
    for path in paths():
        use_path(path)
        full = product(x, w, bias)
        assert torch.allclose(full, want, rtol=1e-5, atol=1e-4)
        for rows in range(1, MAX_ROWS + 1):
            assert torch.equal(product(x[:rows], w, bias), full[:rows]), (path, rows)
        assert torch.equal(torch.cat([product(x[i:i + 1], w, bias) for i in range(MAX_ROWS)]),
                           full)
        order = torch.randperm(MAX_ROWS, generator=gen)
        assert torch.equal(product(x[order], w, bias), full[order])
        # a weight row alone (a group's last rows are taken one at a time, with the plain
        # horizontal sum, where a whole group sums four at once)
        for j in range(n):
            assert torch.equal(product(x, w[j:j + 1], bias[j:j + 1])[:, 0], full[:, j])


@pytest.mark.parametrize("k", [99, 96])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_gemv_kernel_gives_every_block_size_the_bits_of_one_row(dtype, k, use_path):
    """kernels.bind_gemv (the products of torch's path where `gemv` was chosen): blocks 1..64
    and odd sizes, outputs in the weight's dtype."""
    torch.manual_seed(3)
    lin = Linear(k, 41, bias=True).to(DTYPES[dtype]).requires_grad_(False)
    x = torch.randn(MAX_ROWS, k).to(DTYPES[dtype])
    for path in paths():
        use_path(path)
        gemv = kernels.bind_gemv(lin)
        alone = torch.cat([gemv(x[i:i + 1]) for i in range(MAX_ROWS)])
        for rows in range(1, MAX_ROWS + 1):
            assert torch.equal(gemv(x[:rows]), alone[:rows]), (path, rows)
        start = 0
        for rows in (7, 13, 1, 5, 38):           # a block at every offset of x
            assert torch.equal(gemv(x[start:start + rows]), alone[start:start + rows])
            start += rows


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """odd: products with tails and odd widths: hidden 72 (head_dim 18), intermediate 99
    (gate/up: 198 weight rows, not whole groups of 4; down: k = 99). even: every k a multiple of
    32 (hidden 96, intermediate 192), so bf16 products take AMX where the CPU has it."""
    root = tmp_path_factory.mktemp("tiled")
    return {"odd": make_model_folder(root / "odd", "gqa", hidden_size=72, intermediate_size=99),
            "even": make_model_folder(root / "even", "gqa", hidden_size=96,
                                      intermediate_size=192)}


@pytest.mark.parametrize("model, dtype, amx", [("odd", "fp32", 0), ("odd", "bf16", 0),
                                               ("even", "fp32", 0), ("even", "bf16", 0),
                                               ("even", "bf16", 1)])
def test_every_block_size_up_to_128_is_bit_equal_to_one_token_steps(models, model, dtype, amx,
                                                                    monkeypatch):
    """Through the fused step (SPECBENCH_FUSED=on: every block of 1..128): a block of n tokens,
    for every n up to 64, 81 and 128, and the same tokens in blocks of odd sizes one after
    another, give the hidden states, logits and cache rows of decoding each token alone. (amx 1: bf16 on AMX tiles where
    the CPU has them, else the same as 0.)"""
    monkeypatch.setenv(AMX_ENV, "on" if amx else "off")
    check_blocks_against_steps(models[model], dtype, monkeypatch)


def check_blocks_against_steps(folder, dtype, monkeypatch):
    monkeypatch.setenv(FUSED_ENV, "on")
    monkeypatch.setenv("SPECBENCH_KERNELS", "auto")     # =aten would turn the fused step off
    engine, _, _ = load_engine(str(folder), dtype=dtype, device="cpu", with_tokenizer=False)
    assert engine.fused is not None and engine.fused.rows == set(range(1, MAX_BLOCK + 1))
    assert engine.fused.amx == (os.environ.get(AMX_ENV) == "on" and can_use_amx(engine))
    pre, end = 9, 9 + MAX_BLOCK
    ids = torch.randint(96, (1, end), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        steps = engine.new_cache(end)
        engine(ids[:, :pre], steps, 0)
        alone = [engine(ids[:, i:i + 1], steps, i, return_hidden=True) for i in range(pre, end)]
        logits = torch.cat([l for l, _ in alone], 1)
        hidden = torch.cat([h for _, h in alone], 1)
        block = engine.new_cache(end)
        engine(ids[:, :pre], block, 0)
        for n in [*range(1, MAX_ROWS + 1), 81, MAX_BLOCK]:    # 81: Token Recycling's tree
            block.truncate(pre)
            got_logits, got_hidden = engine(ids[:, pre:pre + n], block, pre, return_hidden=True)
            assert torch.equal(got_hidden, hidden[:, :n]), n
            assert torch.equal(got_logits, logits[:, :n]), n
        assert torch.equal(block.k, steps.k) and torch.equal(block.v, steps.v)
        block.truncate(pre)
        at, parts = pre, []
        for n in (7, 13, 1, 6, 37):
            parts.append(engine(ids[:, at:at + n], block, at))
            at += n
        assert torch.equal(torch.cat(parts, 1), logits[:, :at - pre])
