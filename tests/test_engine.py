"""The engine's logits equal transformers' own model on the same weights."""

import pytest
import torch

from specbench_cli.engine.llama import EngineConfig, UnsupportedModel
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import ModelLoadError

from conftest import VARIANTS, assert_sums_close, make_model_folder, model_sums


def reference(folder):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp(request.param) / "m", request.param)
    engine, _, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    return engine, reference(folder)


def test_prefill_and_decode_match_transformers(pair):
    engine, ref = pair
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (1, 40))
    cache = engine.cache(128)
    sums = model_sums(engine.config)      # the engine's kernels against transformers' products
    with torch.no_grad():
        want = ref(ids).logits
        got = engine(ids[:, :39], cache, 0)
        assert_sums_close(got, want[:, :39], **sums)
        got_last = engine(ids[:, 39:], cache, 39)
    assert_sums_close(got_last, want[:, 39:], **sums)


def test_masked_block_matches_transformers(pair):
    """A tree block: two branches after a shared prefix, each must see only its own ancestors."""
    engine, ref = pair
    torch.manual_seed(2)
    prefix = torch.randint(3, 90, (1, 20))
    a, b = torch.randint(3, 90, (1, 3)), torch.randint(3, 90, (1, 2))
    cache = engine.cache(64)
    # Block: root r, branch a (3 tokens, depth 1..3), branch b (2 tokens, depth 1..2) after a0's root.
    root = torch.tensor([[7]])
    block = torch.cat([root, a, b], dim=1)
    parents = [-1, 0, 1, 2, 0, 4]
    mask = torch.zeros(6, 6, dtype=torch.bool)
    depth = []
    for i, p in enumerate(parents):
        mask[i, i] = True
        d, j = 0, p
        while j >= 0:
            mask[i, j] = True
            j, d = parents[j], d + 1
        depth.append(d)
    positions = 20 + torch.tensor(depth)
    with torch.no_grad():
        engine(prefix, cache, 0)
        got = engine(block, cache, 20, positions=positions, block_mask=mask)
        want_a = ref(torch.cat([prefix, root, a], 1)).logits[0, 20:]
        want_b = ref(torch.cat([prefix, root, b], 1)).logits[0, 20:]
    assert_sums_close(got[0, :4], want_a, **model_sums(engine.config))
    assert_sums_close(got[0, [0, 4, 5]], want_b, **model_sums(engine.config))


def test_keep_rows_then_continue_equals_straight_decoding(pair):
    engine, ref = pair
    torch.manual_seed(3)
    prefix = torch.randint(3, 90, (1, 10))
    cache = engine.cache(64)
    # Write junk rows 10..12 and the real continuation at rows 13..14, then compact them to 10..11.
    junk, keep = torch.randint(3, 90, (1, 3)), torch.randint(3, 90, (1, 2))
    block = torch.cat([junk, keep], 1)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[:3, :3] = torch.ones(3, 3).tril().bool()
    mask[3:, 3:] = torch.ones(2, 2).tril().bool()
    positions = torch.tensor([10, 11, 12, 10, 11])
    nxt = torch.tensor([[5]])
    with torch.no_grad():
        engine(prefix, cache, 0)
        engine(block, cache, 10, positions=positions, block_mask=mask)
        cache.keep_rows([13, 14], 10)
        got = engine(nxt, cache, 12)
        want = ref(torch.cat([prefix, keep, nxt], 1)).logits[:, -1:]
    assert cache.lengths == [13] * engine.num_layers
    assert_sums_close(got, want, **model_sums(engine.config))


def test_layer_ranges_compose_to_the_full_forward(tiny_engine):
    engine, _ = tiny_engine
    ids = torch.randint(3, 90, (1, 12))
    with torch.no_grad():
        full = engine(ids, engine.cache(32), 0)
        cache = engine.cache(32)
        h = engine.layers(engine.embed(ids), 0, 1, cache, 0)
        h = engine.layers(h, 1, engine.num_layers, cache, 0)
        split = engine.logits(engine.norm(h))
    assert torch.equal(full, split)


def test_unsupported_architecture_is_named():
    with pytest.raises(UnsupportedModel, match="model_type 'gpt2' is not supported"):
        EngineConfig.from_hf({"model_type": "gpt2"})


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_engine(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_engine(str(tmp_path))

