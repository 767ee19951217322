"""Does a method sample from the target's distribution? A two-sample test on the first tokens.

Vanilla and the method each answer the same prompt many times, every answer with its own seed
(disjoint seed ranges, so the two samples are independent); the first `tokens` new tokens of
each answer form one category. A chi-square test of homogeneity on the 2 × K table (categories
whose expected count is below 5 pooled into one) gives a p-value; a method fails when it is below
`alpha`, the test's false-alarm rate for a lossless method. With k ≥ 3 tokens a draft chain's
acceptance of several drafts, its rejections and its bonus token all shape the categories.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch

from ..methods.base import Decoding, Method
from ..methods.verify import Sampling

MIN_EXPECTED = 5


@dataclass
class CheckResult:
    method: str
    samples: int
    categories: int            # after pooling
    statistic: float
    p_value: float
    alpha: float

    @property
    def passed(self) -> bool:
        return self.p_value >= self.alpha


def first_tokens(method: Method, prompt_ids: list[int], tokens: int, samples: int,
                 sampling: Sampling, first_seed: int) -> Counter:
    """How often each sequence of the first `tokens` new tokens came out over `samples`
    answers, the i-th answer seeded with first_seed + i."""
    counts: Counter = Counter()
    with torch.inference_mode():
        for i in range(samples):
            decoding = Decoding(replace(sampling, seed=first_seed + i))
            counts[tuple(method.generate(prompt_ids, tokens, decoding).tokens)] += 1
    return counts


def chi_square(a: Counter, b: Counter) -> tuple[float, int, float]:
    """Homogeneity of two samples of categories: (statistic, degrees of freedom, p-value)."""
    na, nb = sum(a.values()), sum(b.values())
    total = na + nb
    pooled, rare = [], [0, 0]
    for key in a.keys() | b.keys():
        row = [a[key], b[key]]
        # Expected counts under homogeneity are total share × sample size; the smaller sample
        # decides whether a category stands alone.
        if (row[0] + row[1]) * min(na, nb) / total < MIN_EXPECTED:
            rare = [rare[0] + row[0], rare[1] + row[1]]
        else:
            pooled.append(row)
    if sum(rare):
        pooled.append(rare)
    if len(pooled) < 2:
        return 0.0, 0, 1.0          # one category: the samples cannot differ
    statistic = 0.0
    for ca, cb in pooled:
        for observed, n in ((ca, na), (cb, nb)):
            expected = (ca + cb) * n / total
            statistic += (observed - expected) ** 2 / expected
    df = len(pooled) - 1
    p = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                      torch.tensor(statistic / 2, dtype=torch.float64)))
    return statistic, df, p


def check_method(vanilla: Counter, method: Method, name: str, prompt_ids: list[int],
                 tokens: int, samples: int, sampling: Sampling, first_seed: int,
                 alpha: float) -> CheckResult:
    counts = first_tokens(method, prompt_ids, tokens, samples, sampling, first_seed)
    statistic, df, p = chi_square(vanilla, counts)
    return CheckResult(name, samples, df + 1, statistic, p, alpha)


def check_sampling(methods: dict[str, Method], prompt_ids: list[int],
                   tokens: int = 3, samples: int = 2000, sampling: Sampling | None = None,
                   alpha: float = 1e-3, progress=None) -> list[CheckResult]:
    """Each method's first `tokens` tokens against vanilla's, `samples` answers each."""
    sampling = sampling or Sampling(1.0)
    vanilla = first_tokens(methods["vanilla"], prompt_ids, tokens, samples, sampling, 0)
    results = []
    for j, (name, method) in enumerate((n, m) for n, m in methods.items() if n != "vanilla"):
        results.append(check_method(vanilla, method, name, prompt_ids, tokens, samples,
                                    sampling, (j + 1) * samples, alpha))
        if progress:
            progress(name)
    return results
