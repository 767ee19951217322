"""The fused C decoding step (engine/fused.py, cpu.c) and the weight arena (engine/arena.py)."""

import pytest
import torch

from conftest import assert_sums_close, make_model_folder, model_sums
from specbench_cli.engine import kernels
from specbench_cli.engine.fused import (AMX_ENV, FUSED_ENV, MAX_BLOCK, FusedLayers,
                                        can_use_amx, choose_amx, choose_fused, fused_shape)
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS
from test_methods import PROMPTS, make

needs_cpu_c = pytest.mark.skipif(kernels.cpu_library() is None,
                                 reason=f"cpu.c does not build here: {kernels._LIB.get('why')}")
pytestmark = needs_cpu_c


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    made = {v: make_model_folder(root / v, v) for v in ("llama", "gqa", "qkv_bias", "llama3_rope")}
    # head_dim 64 (SmolLM2's): attention's 64-wide value sums; two query heads a kv head
    made["hd64"] = make_model_folder(root / "hd64", "gqa", hidden_size=128, num_attention_heads=2,
                                     num_key_value_heads=1)
    return made


def forwards(engine, path, ids, pre):
    """Logits of a prefill of `pre` tokens, a one-token step, a causal block of 4 and a tree block
    of 3 (two siblings), and the cache rows they wrote, with `path` as the engine's fused step."""
    engine.fused = path
    cache = engine.new_cache(pre + 34)
    with torch.inference_mode():
        engine(ids[:, :pre], cache, 0)
        one = engine(ids[:, pre:pre + 1], cache, pre)
        block = engine(ids[:, pre + 1:pre + 5], cache, pre + 1)
        tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
        branch = engine(ids[:, pre + 5:pre + 8], cache, pre + 5,
                        positions=torch.tensor([pre + 5, pre + 6, pre + 6]), block_mask=tree)
    engine.fused = None
    end = pre + 8
    return [one, block, branch, cache.k[:, :, :, :end], cache.v[:, :, :, :end]], cache.lengths


# pre 30: one chunk of values; 300: the weighted sums over several (cpu.c's KEY_CHUNK, 64)
@pytest.mark.parametrize("pre", [30, 300])
@pytest.mark.parametrize("variant", ["llama", "gqa", "qkv_bias", "llama3_rope", "hd64"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fused_layers_equal_the_torch_modules(folders, variant, dtype, pre, monkeypatch):
    monkeypatch.setenv(kernels.ENV, "aten")         # the reference: torch's own products
    engine, _, _ = load_engine(str(folders[variant]), dtype=dtype, device="cpu",
                               with_tokenizer=False)
    ids = torch.randint(96, (1, pre + 10), generator=torch.Generator().manual_seed(0))
    want, want_lengths = forwards(engine, None, ids, pre)
    got, got_lengths = forwards(engine, FusedLayers(engine), ids, pre)
    assert got_lengths == want_lengths == [pre + 8] * engine.num_layers
    for g, w in zip(got, want):
        if dtype == "fp32":         # summation order only
            assert_sums_close(g, w, **model_sums(engine.config))
        else:
            # bf16: fp32 sums rounded to bf16 at the same points as torch's eager ops: a value
            # may land one bf16 step apart, and a layer passes that on (no sqrt(k): the sums'
            # own error is fp32's). Seen: up to 2.2 bf16 steps of the largest value.
            assert_sums_close(g, w, k=1, depth=engine.num_layers, dtype=torch.bfloat16, c=2)
    if dtype == "fp32":     # (bf16: torch rounds the logits to bf16, ties included; ours are fp32)
        for g, w in zip(got[:3], want[:3]):
            assert torch.equal(g.argmax(-1), w.argmax(-1))


# pre 252: the block's rows see 253 to 260 keys, across a boundary (256) of cpu.c's chunks of
# values (KEY_CHUNK, 64)
@pytest.mark.parametrize("variant, pre", [("gqa", 20), ("gqa", 252), ("hd64", 252)])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_token_decoded_alone_or_in_a_block_has_bit_equal_logits(folders, dtype, variant, pre):
    """A row's arithmetic does not depend on its block: vanilla's one-token steps and a
    verification block (or a tree's path) of the same tokens give the same hidden states, cache
    rows and logits, bit for bit, so exactness is not left to ties."""
    engine, _, _ = load_engine(str(folders[variant]), dtype=dtype, device="cpu",
                               with_tokenizer=False)
    engine.fused = FusedLayers(engine)
    end = pre + 8
    ids = torch.randint(96, (1, end), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        steps = engine.new_cache(end + 8)
        engine(ids[:, :pre], steps, 0)
        alone = [engine(ids[:, i:i + 1], steps, i, return_hidden=True) for i in range(pre, end)]
        one_by_one = torch.cat([h for _, h in alone], 1)
        block = engine.new_cache(end + 8)
        engine(ids[:, :pre], block, 0)
        logits, together = engine(ids[:, pre:end], block, pre, return_hidden=True)
        # a tree: the accepted path (rows 0, 2, 4) has a rejected sibling beside each node
        tree = engine.new_cache(end + 8)
        engine(ids[:, :pre], tree, 0)
        nodes = torch.tensor([[ids[0, pre], 7, ids[0, pre + 1], 9, ids[0, pre + 2]]])
        mask = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 0, 1, 1, 0],
                             [1, 0, 1, 0, 1]], dtype=torch.bool)
        positions = torch.tensor([0, 1, 1, 2, 2]) + pre
        path = engine(nodes, tree, pre, positions=positions, block_mask=mask,
                      return_hidden=True)[1][:, [0, 2, 4]]
    assert torch.equal(one_by_one, together)
    assert torch.equal(torch.cat([l for l, _ in alone], 1), logits)
    assert torch.equal(steps.k[:, :, :, :end], block.k[:, :, :, :end])
    assert torch.equal(path, one_by_one[:, :3])


@pytest.mark.parametrize("fused", [False, True])
def test_a_bf16_model_keeps_a_bf16_cache_at_no_cost_in_bits(folders, fused):
    """Its keys and values are bf16 values: a bf16 cache holds them exactly, half the bytes of
    an fp32 one, and every logit is the same (torch's path and the fused step, both widening the
    cache to fp32 for attention)."""
    engine, _, _ = load_engine(str(folders["hd64"]), dtype="bf16", device="cpu",
                               with_tokenizer=False)
    engine.fused = FusedLayers(engine) if fused else None
    assert engine.new_cache(8).k.dtype == torch.bfloat16
    ids = torch.randint(96, (1, 160), generator=torch.Generator().manual_seed(2))
    logits = {}
    with torch.inference_mode():
        for dtype in (torch.bfloat16, torch.float32):
            cache = engine.new_cache(200, dtype=dtype)
            out = [engine(ids[:, :150], cache, 0)]
            out += [engine(ids[:, i:i + 1], cache, i) for i in range(150, 156)]
            out.append(engine(ids[:, 156:160], cache, 156))
            logits[dtype] = out
            keys = cache.k[:, :, :, :160].clone()
    for a, b in zip(*logits.values()):
        assert torch.equal(a, b)
    assert torch.equal(keys, keys.bfloat16().float())      # bf16 values, stored in fp32 too


@pytest.mark.parametrize("text", PROMPTS[:2])
def test_every_method_equals_vanilla_on_the_fused_step(tiny_engine, text):
    from specbench_cli.bench.prompts import build_prompt_ids
    engine, tok = tiny_engine
    saved, engine.fused = engine.fused, FusedLayers(engine)
    try:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        outputs = {name: make(name, engine, {2}, tok).generate(ids, 60).tokens for name in METHODS}
    finally:
        engine.fused = saved
    for name in METHODS:
        assert outputs[name] == outputs["vanilla"], name


def test_cache_gaps_and_overflows_are_refused(tiny_engine):
    engine, _ = tiny_engine
    fused = FusedLayers(engine)
    h = torch.zeros(1, 1, engine.config.hidden_size)
    rope = engine.rope(torch.tensor([5]))
    cache = engine.new_cache(8)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="leaves a gap"):
            fused.run(h, 0, engine.num_layers, cache, 5, rope, None)
        cache.lengths = [8] * engine.num_layers
        with pytest.raises(RuntimeError, match="cache overflow: 9 rows needed, capacity 8"):
            fused.run(h, 0, engine.num_layers, cache, 8, rope, None)


def test_the_torch_path_serves_training_and_large_blocks(tiny_engine):
    engine, _ = tiny_engine
    fused = FusedLayers(engine)
    cache = engine.new_cache(64)
    h = torch.zeros(1, 1, engine.config.hidden_size)
    assert not fused.takes(engine, h, cache)                     # autograd on
    with torch.inference_mode():
        assert fused.takes(engine, h, cache)
        assert fused.takes(engine, torch.zeros(1, MAX_BLOCK, h.shape[-1]), cache)
        assert not fused.takes(engine, torch.zeros(1, MAX_BLOCK + 1, h.shape[-1]), cache)
        assert not fused.takes(engine, h, None)                  # no cache (training forward)


def test_product_over_a_slice_of_the_lm_head_is_torch_s(tiny_engine):
    """FR-Spec's and EAGLE-3's reduced heads go through the fused product: the same values as
    torch's, and None where it does not apply (so the caller falls back)."""
    engine, _ = tiny_engine
    fused = FusedLayers(engine)
    rows = engine.lm_head.weight[::3].contiguous()
    h = torch.randn(1, 3, engine.config.hidden_size)
    with torch.inference_mode():
        got = fused.product(h[0], rows)
        assert got.shape == (3, rows.shape[0]) and got.dtype == torch.float32
        assert torch.allclose(got, torch.nn.functional.linear(h[0], rows), atol=1e-4)
        assert fused.product(torch.randn(MAX_BLOCK + 1, h.shape[-1]), rows) is None   # too many
        assert fused.product(h[0], engine.lm_head.weight[::3]) is None          # a strided view
    assert fused.product(h[0], rows) is None                                    # autograd on


def test_the_choice_is_measured_cached_and_can_be_turned_off(tiny_model_dir, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    monkeypatch.delenv(kernels.ENV, raising=False)          # timed, whatever the session forces
    monkeypatch.delenv(FUSED_ENV, raising=False)
    engine, _, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu",
                               with_tokenizer=False)
    choice = engine.kernel_choice["fused"]
    assert set(choice["rows"]) == {str(b) for b in kernels.BUCKETS}
    assert all(set(ms) == {"torch", "fused"} for ms in choice["rows"].values())
    assert choice["used"] == (engine.fused is not None)
    # a block size goes to torch's path only where that timed clearly (MIN_GAIN) faster
    kept = {n for n in range(1, MAX_BLOCK + 1)
            if (ms := choice["rows"][str(kernels.bucket_of(n))])["torch"]
            >= (1 - kernels.MIN_GAIN) * ms["fused"]}
    assert (engine.fused.rows if engine.fused is not None else set()) == kept
    # the second load reads the cached timing
    again = choose_fused(engine, engine.kernel_choice["machine"])
    assert again["rows"] == choice["rows"]
    monkeypatch.setenv(kernels.ENV, "aten")
    off, _, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu", with_tokenizer=False)
    assert off.fused is None
    assert off.kernel_choice["fused"] == {"used": False, "why": "SPECBENCH_KERNELS=aten",
                                          "rows": {}, "amx": False}


def test_amx_products_are_taken_by_measurement_and_can_be_forced(tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    """bf16 products on AMX tiles only where the CPU grants them, and then by timing: a 16-token
    forward clearly faster, a one-token forward no more than the noise margin slower."""
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.delenv(FUSED_ENV, raising=False)
    monkeypatch.delenv(AMX_ENV, raising=False)

    def load():
        return load_engine(str(tiny_model_dir), dtype="bf16", device="cpu",
                           with_tokenizer=False)[0]
    engine = load()
    choice = engine.kernel_choice["fused"]
    if not can_use_amx(engine):
        assert choice["amx"] is False and "AMX" not in choice["why"]
    else:
        why = choice["why"]
        use, _, ms = choose_amx(engine, engine.kernel_choice["machine"], fused_shape(engine))
        one, block = ms["1"], ms["16"]
        assert use == (block["amx"] < (1 - kernels.MIN_GAIN) * block["vector"]
                       and one["amx"] <= (1 + kernels.MIN_GAIN) * one["vector"])
        assert choice["amx"] == (use and choice["used"]), why
        assert (engine.fused is not None and engine.fused.amx) == choice["amx"]
    for forced in ("on", "off"):
        monkeypatch.setenv(AMX_ENV, forced)
        monkeypatch.setenv(FUSED_ENV, "on")
        assert load().fused.amx == (forced == "on" and can_use_amx(engine))
    monkeypatch.setenv(AMX_ENV, "sometimes")
    with pytest.raises(SpecbenchError, match="SPECBENCH_AMX='sometimes': choose auto, on or off"):
        load()


@pytest.mark.parametrize("variant", ["llama", "llama3_rope"])        # untied and tied LM head
def test_the_arena_keeps_every_weight_and_lays_them_out_in_step_order(folders, variant):
    from safetensors.torch import load_file
    engine, _, _ = load_engine(str(folders[variant]), dtype="fp32", device="cpu",
                               with_tokenizer=False)
    files = load_file(str(folders[variant] / "model.safetensors"))
    state = engine.state_dict()
    for name, tensor in files.items():
        if name in state:
            assert torch.equal(state[name], tensor), name
    from specbench_cli.engine.arena import step_order
    pointers = [getattr(m, name).data_ptr() for m, name in step_order(engine)]
    assert pointers == sorted(pointers) and len(set(pointers)) == len(pointers)
    attn = engine.model.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == attn.qkv_proj.weight.data_ptr()
    assert (engine.lm_head.weight is engine.model.embed_tokens.weight) == \
        engine.config.tie_word_embeddings
