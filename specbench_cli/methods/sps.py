"""SpS: classic speculative decoding with a separate small draft model (greedy).

A drafter that shares the target's tokenizer proposes `num_draft` (γ) tokens one at a time from
its own KV cache; the target verifies the chain in one forward. The drafter's cache is rolled
back with the target's: it keeps the rows of the tokens that were both fed to it and committed,
and at the start of the next round it catches up on the committed tokens it has not seen (the
target's bonus token, and the last draft when all were accepted).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..drafters.addon_folder import check_finished
from ..engine import Engine
from ..engine.load import DTYPE_NAMES, load_engine, load_tokenizer
from ..errors import SpecbenchError
from ..models.targets import model_folder
from ..train import Trainer
from ..train.loop import addon_builder
from ..train.sps import train_sps
from .base import ADDON_FOLDER, GREEDY, Addon, Budget, Decoding, Generation, Method, Option, \
    TargetAddon
from .verify import DRAFT_HEADROOM, DecodeState, verify_chain

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class DrafterError(SpecbenchError):
    pass


def check_vocabulary(target: Engine, drafter: Engine, target_tok=None, drafter_tok=None):
    """The drafter must speak the target's token ids. Its embedding may be padded larger (its
    extra rows are never drafted: argmax runs over the target's ids only), never smaller: the
    target may commit an id the drafter could not embed. When both tokenizers are at hand their
    vocabulary maps must agree on every id the target can emit (ids past its embedding, such
    as a tokenizer's added padding token, never reach decoding), since equal sizes alone do not
    make equal ids."""
    have, want = drafter.config.vocab_size, target.config.vocab_size
    if have < want:
        raise DrafterError(f"sps: the drafter's vocabulary ({have} ids) is smaller than the "
                           f"target's ({want}); a drafter needs the target's tokenizer")
    if target_tok is not None and drafter_tok is not None:
        ours, theirs = ({token: i for token, i in tok.get_vocab().items() if i < want}
                        for tok in (target_tok, drafter_tok))
        if ours != theirs:
            differ = sum(ours.get(t) != theirs.get(t) for t in ours.keys() | theirs.keys())
            raise DrafterError(f"sps: the drafter's tokenizer differs from the target's "
                               f"({differ} of {len(ours)} tokens map to other ids)")


def load_drafter(name: str, target: Engine) -> tuple[Engine, object]:
    """A drafter named as any model (folder, hub id, .gguf, named target), on the target's
    device and dtype, and its tokenizer when its folder has one."""
    check_finished(Path(name).expanduser(), "SpS drafter", DrafterError)
    folder = model_folder(name)
    drafter, _, _ = load_engine(str(folder), dtype=DTYPE_NAMES[target.dtype],
                                device=str(target.device), with_tokenizer=False)
    has_tokenizer = any((Path(folder) / f).is_file() for f in TOKENIZER_FILES)
    return drafter, load_tokenizer(Path(folder)) if has_tokenizer else None


def next_draft_length(length: int, accepted: int, drafted: int, limit: int) -> int:
    """The adaptive γ (the "heuristic" schedule of Hugging Face assisted generation, which
    Spec-Bench's SpS runs): two more after a fully accepted round, one fewer otherwise, in
    [1, limit]."""
    if drafted == 0:                # nothing was tried (end of the answer): no evidence
        return length
    return min(limit, length + 2) if accepted == drafted else max(1, length - 1)


class SpS(Method):
    name = "sps"
    description = "SpS: a separate small draft model proposes γ tokens autoregressively (chain)"
    options = {
        "drafter": Option(None, str, "draft model with the target's tokenizer: folder, hub id, "
                          ".gguf file or named target (train one with `specbench train sps`)"),
        "num_draft": Option(5, int, "drafts per round (γ); Spec-Bench's SpS starts at 5", low=1),
        "adaptive": Option(False, bool, "adapt γ per round from num_draft: +2 after a fully "
                           "accepted round, -1 otherwise, in [1, 2·num_draft] (Hugging Face's "
                           "heuristic schedule)"),
    }
    # Adaptive γ may reach 2·num_draft drafts, so it starts from half the budget.
    budget = Budget("num_draft", "num_draft = budget − 1 (adaptive: (budget − 1) / 2)",
                    lambda n, o: {"num_draft": max(1, (n - 1) // 2) if o["adaptive"] else n - 1},
                    lambda o: o["num_draft"] * (2 if o["adaptive"] else 1) + 1)
    # ~45 s on 2 cores (training 36 s): top-1 agreement with the target 0.95 (0.66 after 400
    # steps of 192 tokens).
    builtin_addon = Addon(settings={"steps": 1200, "lr": 3e-3, "batch_size": 8,
                                    "hidden_size": 64, "layers": 1},
                          build=addon_builder(train_sps))
    # γ 6: a drafter step costs ~0.2 of a target forward on this CPU and a verify block grows
    # slowly; --limit 5 sweep (noisy, shared 2 cores): γ 2/3/4/5/6/8/10 → MAT 2.36/2.82/3.16/
    # 3.57/3.94/4.46/4.63, speedup 1.32/1.41/1.44/1.54/1.60/1.58/1.52×; adaptive γ 1.43× vs 1.47×.
    builtin_options = {"drafter": ADDON_FOLDER, "num_draft": 6}
    trainer = Trainer(
        train_sps, "drafter",
        "Train an SpS drafter: a tiny Llama from scratch with the target's tokenizer, distilled "
        "from the target on assistant tokens. Resumes from OUT/checkpoint.pt when interrupted.",
        "Output model folder (config.json, model.safetensors, the target's tokenizer).",
        {"hidden_size": Option(64, int, "Drafter width (a multiple of 32; heads of 32)."),
         "layers": Option(1, int, "Drafter decoder layers."),
         "distill": Option(True, bool, "Soft cross-entropy against the target's distribution; "
                                       "--no-distill: plain next-token loss."),
         "lr": Option(3e-3, float, "Peak learning rate (cosine schedule)."),
         "warmup": Option(None, int, "Warm-up steps (default steps/20).")})
    # SmolLM2: a 2-layer, 128-wide Llama from scratch with its tokenizer, distilled.
    target_addons = {"smollm2": TargetAddon(
        {"hidden_size": 128, "layers": 2, "steps": 300, "lr": 3e-3, "batch_size": 4},
        {"drafter": ADDON_FOLDER, "num_draft": 4})}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        drafter = self.require("drafter", "a draft model: --opt sps.drafter=PATH (a small model "
                                          "with the target's tokenizer; `specbench train sps`)")
        drafter_tok = None
        if isinstance(drafter, (str, Path)):
            drafter, drafter_tok = load_drafter(str(drafter), engine)
            o["drafter"] = str(o["drafter"])
        if not isinstance(drafter, Engine):
            raise DrafterError(f"sps: drafter must be a model name or path or a loaded Engine, "
                               f"not {type(drafter).__name__}")
        check_vocabulary(engine, drafter, tokenizer, drafter_tok)
        self.drafter = drafter.to(engine.device, engine.dtype).eval().requires_grad_(False)

    def info(self) -> dict:
        cfg = self.drafter.config
        return {"drafter_layers": cfg.num_layers, "drafter_hidden_size": cfg.hidden_size}

    def parameter_overhead(self) -> dict:
        params = self.drafter.num_parameters()
        return {"params": params, "bytes": params * self.drafter.dtype.itemsize}

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        # Its own cache, never the drafter's shared one: the drafter may be the target itself.
        cache = self.drafter.new_cache(len(prompt_ids) + max_new_tokens + DRAFT_HEADROOM)
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        seen = 0                    # committed tokens whose rows the drafter's cache holds
        length = self.options["num_draft"]
        stats = {"rounds": 0, "drafted": 0}
        while not state.done:
            limit = min(length, state.room - 1)    # verify_chain could not commit more
            draft, q = [], []
            if limit > 0:
                with state.phase("draft"):
                    draft, q = self.draft(state, state.tokens[seen:], seen, cache, limit)
            committed = len(state.tokens)
            accepted = verify_chain(state, draft, q=q if state.sampling else None)
            stats["rounds"] += 1
            stats["drafted"] += len(draft)
            # The drafter saw the committed tokens and every draft but the last; of the drafts,
            # the accepted ones stay valid.
            seen = committed + min(accepted, len(draft) - 1) if draft else seen
            cache.truncate(seen)
            if self.options["adaptive"]:
                length = next_draft_length(length, accepted, len(draft),
                                           2 * self.options["num_draft"])
        return state.result(**stats)

    def draft(self, state: DecodeState, unseen: list[int], offset: int, cache, count: int):
        """Feed the committed tokens the drafter has not seen (one block), then draft (greedily,
        or sampling from q), each draft fed back as the next input. The last draft is never fed.
        Returns the drafts and the distributions they came from."""
        block = unseen
        draft, q = [], []
        while True:
            token, q_i = state.draft_token(self.next_logits(block, offset, cache))
            draft.append(token)
            q.append(q_i)
            if len(draft) == count:
                return draft, q
            offset += len(block)
            block = draft[-1:]

    def next_logits(self, ids: list[int], offset: int, cache) -> torch.Tensor:
        d = self.drafter
        h = d.layers(d.embed(torch.tensor([ids], device=d.device)), 0, d.num_layers, cache,
                     offset)
        # The LM head on the last position only: the catch-up block's other logits are unused;
        # the drafter's padded ids past the target's vocabulary are never drafted.
        return d.logits(d.norm(h[:, -1]))[0, :self.engine.config.vocab_size]
