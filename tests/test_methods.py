"""Every lossless method returns vanilla's greedy tokens; accept lengths add up."""

import json

import pytest
import torch

from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS, parse_methods
from specbench_cli.methods.llma import first_occurrences
from specbench_cli.methods.pld import lookup
from specbench_cli.bench.prompts import build_prompt_ids

PROMPTS = [
    "Summarize: the cat sat on the mat. the cat sat on the mat again and again.",
    "Translate German to English: Guten Morgen, wie geht es dir heute?",
    "abcabcabcabcabcabc",
    "x",
]


def random_heads(engine, num_heads=3, seed=0):
    from specbench_cli.drafters.medusa import make_heads
    torch.manual_seed(seed)
    heads = make_heads(engine.config.hidden_size, engine.config.vocab_size, num_heads,
                       engine.lm_head.weight)
    with torch.no_grad():
        for head in heads:
            head[0].linear.weight.normal_(0, 0.3)
    return heads


_STORES = {}


def tiny_datastore(engine, tok):
    """A datastore of text the tiny model's greedy outputs share (built once per session)."""
    import tempfile
    from pathlib import Path

    from specbench_cli.drafters.datastore import Datastore, build_datastore
    if "store" not in _STORES:
        folder = Path(tempfile.mkdtemp())
        texts = []
        for text in PROMPTS:
            ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
            texts.append(tok.decode(METHODS["vanilla"](engine, {2}).generate(ids, 30).tokens))
        (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                     for t in texts))
        build_datastore(tok, [folder / "corpus.jsonl"], folder / "ds")
        _STORES["store"] = Datastore(folder / "ds", tok)
    return _STORES["store"]


def tiny_drafter(engine):
    """A random one-layer model of the tiny models' vocabulary (built once per session)."""
    import tempfile
    from pathlib import Path

    from conftest import make_model_folder
    from specbench_cli.engine.load import load_engine
    if "drafter" not in _STORES:
        folder = make_model_folder(Path(tempfile.mkdtemp()) / "drafter", "llama", seed=1,
                                   num_hidden_layers=1)
        _STORES["drafter"] = load_engine(str(folder), dtype="fp32", device="cpu")[0]
    return _STORES["drafter"]


def random_eagle_head(engine):
    from specbench_cli.drafters.eagle import EagleHead
    torch.manual_seed(0)
    return EagleHead(engine.config)


def random_hydra_heads(engine, num_heads=3, num_layers=1, shared=False, scale=0.5, seed=0,
                       prefix=False):
    from specbench_cli.drafters.hydra import HydraHeads
    cfg = engine.config
    torch.manual_seed(seed)
    heads = HydraHeads(cfg.hidden_size, cfg.vocab_size, num_heads, num_layers,
                       shared=engine.lm_head if shared else None,
                       prefix=cfg if prefix else None)
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, scale)
    return heads


def random_eagle3_head(engine, kept=None, seed=0, scale=0.3):
    """A random EAGLE-3 head drafting among `kept` (default: the even ids)."""
    from specbench_cli.drafters.eagle3 import Eagle3Head, feature_layers
    kept = torch.arange(0, engine.config.vocab_size, 2) if kept is None else kept
    torch.manual_seed(seed)
    head = Eagle3Head(engine.config, len(kept), feature_layers(engine.num_layers))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, scale)
    head.set_vocab(kept)
    return head


def make(name, engine, eos_ids, tok=None, budget=None):
    """A method with test options: Kangaroo gets a random adapter, Medusa random heads, REST a
    datastore of the model's own outputs, SpS a random tiny drafter, EAGLE a random head, EAGLE-3 a
    random head over the even ids, Hydra random sequentially dependent heads. `budget`: the
    options its declared budget sets for that many tokens a step, on top."""
    options = {"kangaroo": lambda: {"adapter": random_adapter(engine), "threshold": 0.0},
               "medusa": lambda: {"heads": random_heads(engine), "tree": "budget32"},
               "rest": lambda: {"datastore": tiny_datastore(engine, tok)},
               "sps": lambda: {"drafter": tiny_drafter(engine), "num_draft": 4},
               "eagle": lambda: {"head": random_eagle_head(engine)},
               "eagle3": lambda: {"head": random_eagle3_head(engine)},
               "hydra": lambda: {"heads": random_hydra_heads(engine), "tree": "budget32"}}
    given = options.get(name, dict)()
    if budget is not None:
        declared = METHODS[name]
        given.update(declared.budget.to_options(budget, {**declared.defaults, **given}))
    return METHODS[name](engine, eos_ids, tok, **given)


def hf_greedy(folder, prompt_ids, n):
    """transformers' own greedy decoding as an independent reference."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                         eos_token_id=2, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("text", PROMPTS)
def test_lossless_methods_equal_vanilla(tiny_engine, text):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
    outputs = {}
    for name in METHODS:
        gen = make(name, engine, {2}, tok).generate(ids, 60)
        assert sum(gen.accept_lengths) == len(gen.tokens)
        assert all(a >= 1 for a in gen.accept_lengths[:-1])
        outputs[name] = gen.tokens
    for name in METHODS:
        assert outputs[name] == outputs["vanilla"], name


def test_vanilla_equals_transformers_generate(tiny_engine, tiny_model_dir):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    gen = METHODS["vanilla"](engine, {2}).generate(ids, 40)
    assert gen.tokens == hf_greedy(tiny_model_dir, ids, 40)[:len(gen.tokens)]
    assert gen.accept_lengths == [1] * len(gen.tokens)


def test_max_new_tokens_and_eos_trim(tiny_engine):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[2]], [])
    full = METHODS["vanilla"](engine, set()).generate(ids, 30).tokens
    assert len(full) == 30
    for name in METHODS:
        short = make(name, engine, set(), tok).generate(ids, 7)
        assert short.tokens == full[:7] and sum(short.accept_lengths) == 7
        # Pretend the 5th generated token is EOS: output stops right after it.
        cut = make(name, engine, {full[4]}, tok).generate(ids, 30)
        assert cut.tokens == full[:full.index(full[4]) + 1]


def test_pld_lookup_takes_earliest_longest_match():
    t = torch.tensor([5, 6, 7, 8, 9, 1, 6, 7, 3, 4, 6, 7])
    assert lookup(t, 3, 3) == [8, 9, 1]        # suffix (6, 7) first seen at index 1
    assert lookup(torch.tensor([1, 2, 3]), 3, 10) == []
    assert lookup(torch.tensor([4, 1, 2, 4]), 3, 2) == [1, 2]


def test_llma_index_points_past_first_occurrence():
    index = first_occurrences([3, 4, 3, 5], 2)
    assert index[(3,)] == 1 and index[(4,)] == 2 and index[(4, 3)] == 3 and (3, 5) not in index and (5,) not in index


def test_parse_methods_always_includes_vanilla_and_names_valid_ones():
    assert parse_methods("pld,llma") == ["vanilla", "pld", "llma"]
    with pytest.raises(ValueError, match="unknown method 'foo'; valid: vanilla, pld, llma, kangaroo, medusa, rest"):
        parse_methods("foo")


def test_unknown_method_option_is_an_error(tiny_engine):
    with pytest.raises(ValueError, match="pld: unknown option"):
        METHODS["pld"](tiny_engine[0], {2}, window=4)


OUT_OF_RANGE = [(name, key, option) for name, method in METHODS.items()
                for key, option in method.options.items()
                if option.low is not None or option.high is not None]


@pytest.mark.parametrize("name, key, option", OUT_OF_RANGE,
                         ids=[f"{n}.{k}" for n, k, _ in OUT_OF_RANGE])
def test_an_out_of_range_option_is_refused_through_the_python_api(tiny_engine, name, key, option):
    """Bounds are declared once, on the option, and enforced when the method is built, whatever
    route the value came by: here the Python API, past the command line's parsing."""
    engine, tok = tiny_engine
    step = 1 if option.type is int else 0.5
    bad = option.low - step if option.low is not None else option.high + step
    with pytest.raises(SpecbenchError) as err:
        METHODS[name](engine, {2}, tok, **{key: option.type(bad)})
    assert str(err.value) == f"{name}.{key}: must be {option.bounds()} (got {option.type(bad)!r})"


def random_adapter(engine, seed=0, scale=1.0):
    from specbench_cli.drafters.kangaroo import Adapter
    torch.manual_seed(seed)
    adapter = Adapter(engine.config)
    with torch.no_grad():
        for p in adapter.parameters():
            if p.dim() == 2:
                p.normal_(0, scale / p.shape[1] ** 0.5)
    return adapter


@pytest.mark.parametrize("exit_layer, threshold, max_draft", [
    (1, 0.6, 6), (2, 0.0, 4), (3, 0.9, 6), (1, 0.0, 1), (2, 1.0, 6)])
def test_kangaroo_equals_vanilla(tiny_engine, exit_layer, threshold, max_draft):
    engine, tok = tiny_engine
    for text in PROMPTS[:3]:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        want = METHODS["vanilla"](engine, {2}).generate(ids, 50).tokens
        k = METHODS["kangaroo"](engine, {2}, adapter=random_adapter(engine), exit_layer=exit_layer,
                                threshold=threshold, max_draft=max_draft)
        gen = k.generate(ids, 50)
        assert gen.tokens == want
        assert sum(gen.accept_lengths) == len(gen.tokens)
        assert max(gen.accept_lengths) <= max_draft + 1
        if threshold == 0.0:        # never stops early: every round drafts up to the limit
            assert gen.stats["stopped_by_threshold"] == 0


def test_kangaroo_with_adapter_copied_from_target_accepts_drafts(tiny_engine):
    """An 'adapter' that is the target's own next layer's attention drafts well on a repetitive
    prompt; at least the machinery must accept multi-token rounds when drafts are right."""
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[2]], [])
    k = METHODS["kangaroo"](engine, {2}, adapter=random_adapter(engine, scale=0.0), exit_layer=3,
                            threshold=0.0, max_draft=4)
    gen = k.generate(ids, 60)
    assert gen.tokens == METHODS["vanilla"](engine, {2}).generate(ids, 60).tokens
    assert gen.stats["drafted"] >= gen.stats["rounds"]


def test_sweeps_expand_to_a_grid_of_named_variants():
    from specbench_cli.methods import expand_sweeps, parse_sweeps

    def sweep(names, options, specs):
        return expand_sweeps(names, options, parse_sweeps(specs))
    names, opts = sweep(["vanilla", "kangaroo"], {"kangaroo": {"adapter": "A"}},
                        ["kangaroo.exit_layer=1,2", "kangaroo.threshold=0.4,0.8"])
    assert names == ["vanilla", "kangaroo@exit_layer=1,threshold=0.4",
                     "kangaroo@exit_layer=1,threshold=0.8", "kangaroo@exit_layer=2,threshold=0.4",
                     "kangaroo@exit_layer=2,threshold=0.8"]
    assert opts["kangaroo@exit_layer=2,threshold=0.4"] == {"adapter": "A", "exit_layer": 2,
                                                           "threshold": 0.4}
    names, opts = sweep(["vanilla", "medusa"], {}, ["medusa.heads=/x/h300,/y/h600"])
    assert names == ["vanilla", "medusa@heads=h300", "medusa@heads=h600"]   # paths shortened
    assert opts["medusa@heads=h600"] == {"heads": "/y/h600"}
    names, _ = sweep(["vanilla", "rest"], {}, ["rest.datastore=/a/ds,/b/ds"])
    assert names == ["vanilla", "rest@datastore=/a/ds", "rest@datastore=/b/ds"]  # alike: whole
    with pytest.raises(ValueError, match="method 'pld' is not in --methods"):
        sweep(["vanilla"], {}, ["pld.num_draft=1,2"])
    with pytest.raises(ValueError, match="expected method.option=value"):
        sweep(["vanilla"], {}, ["vanilla"])


def test_options_are_parsed_by_their_declared_type():
    from specbench_cli.methods import checked_options, parse_options
    opts = parse_options(["kangaroo.threshold=0.4", "kangaroo.max_draft=3", "pld.num_draft=5",
                          "kangaroo.exit_layer=none", "rest.datastore=/a/b"])
    assert opts == {"kangaroo": {"threshold": 0.4, "max_draft": 3, "exit_layer": None},
                    "pld": {"num_draft": 5}, "rest": {"datastore": "/a/b"}}
    assert type(opts["kangaroo"]["max_draft"]) is int
    # Values from a config or the Python API: ints are taken for floats, nothing else converts.
    assert checked_options({"kangaroo": {"threshold": 1}}, "x") == {"kangaroo": {"threshold": 1.0}}


@pytest.mark.parametrize("spec, message", [
    ("turbo.x=1", "--opt turbo.x=1: unknown method 'turbo'; valid: vanilla, pld"),
    ("pld.ngram=2", "--opt pld.ngram=2: pld has no option 'ngram'; known: max_ngram, num_draft"),
    ("pld.num_draft=many", "--opt pld.num_draft=many: expected int, got 'many'"),
    ("kangaroo.threshold=high", "expected float, got 'high'"),
    ("pld.num_draft=none", "expected int, got 'none'"),      # only None defaults take none
    ("pld.num_draft", "--opt 'pld.num_draft': expected method.option=value"),
    ("num_draft=3", "expected method.option=value"),
])
def test_option_typos_are_one_line_errors(spec, message):
    from specbench_cli.errors import SpecbenchError
    from specbench_cli.methods import parse_options
    with pytest.raises(SpecbenchError) as err:
        parse_options([spec])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_option_is_declared_with_a_type_and_help():
    for cls in METHODS.values():
        assert cls.defaults == {k: o.default for k, o in cls.options.items()}
        for key, option in cls.options.items():
            assert option.type in (int, float, str, bool) and option.help, (cls.name, key)
            assert option.default is None or isinstance(option.default, option.type)
