"""Paired differences between arms, their 95 % intervals, and the verdict they support.

The unit of replication is the seed: a seed fixes the training patches, the initialization of
everything not pretrained and the order of the crops, so two arms with the same seed differ
only in what the study varies. For an arm A and its baseline B (scratch with the same
structure, model, mode, label budget), per seed s:

    d_s = mean over test cases c of (metric(A, s, c) − metric(B, s, c))

(paired by seed *and* case), and the interval is Student's t over the seeds:
mean(d) ± t_{0.975, n−1} · sd(d) / √n. Test cases are not independent replicates of training
(all of them are scored by the same trained model), so they are averaged inside a seed rather
than counted as samples; with n seeds the interval has n − 1 degrees of freedom and is honest
about how few independent trainings there are. A baseline without seeds (the Otsu threshold)
pairs with every seed by case.

Verdict: the interval above 0 → "better" (for a metric where higher is better), below 0 →
"worse", containing 0 → "no detectable difference"; one seed gives no interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..evaluation.metrics import HIGHER_IS_BETTER

BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = ("better", "worse", "no detectable difference",
                                         "not enough seeds for an interval")
INTERVAL_METHOD = "paired by seed and case; 95 % Student-t interval over seeds of the per-seed mean difference"
#: the five SELMA3D participants' methods; any other pretrained method (e.g. ``shape``) is also
#: compared with the best of these
TEAM_METHODS = ("byol", "multitask", "inpainting", "dino", "simclr")
#: the fields that identify an arm's group of rows (everything but the seed and the case)
GROUP_FIELDS = ("structure", "model", "method", "mode", "labels")


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None
    high: float | None
    n: int

    def text(self, digits: int = 3) -> str:
        if self.low is None:
            return f"{self.mean:+.{digits}f} (n={self.n})"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided Student-t confidence interval of ``values`` (no interval for n < 2)."""
    from scipy import stats

    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("t_interval of no values")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, int(x.size))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size))


def verdict(interval: Interval, higher_is_better: bool = True) -> str:
    """better / worse / no detectable difference (module doc), from the arm's point of view."""
    if interval.low is None:
        return TOO_FEW
    if interval.low > 0:
        return BETTER if higher_is_better else WORSE
    if interval.high < 0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE


def case_id(row: dict) -> tuple:
    """A test case: its split and name (splits may reuse names, e.g. ``cfos_000``)."""
    return (row.get("split", ""), row["case"])


def group_key(row: dict) -> tuple:
    return tuple(str(row[f]) for f in GROUP_FIELDS)


def groups(rows: Iterable[dict]) -> dict[tuple, list[dict]]:
    """Rows of every arm group (all seeds and cases of one structure/model/method/mode/budget)."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        out[group_key(row)].append(row)
    return dict(out)


def per_seed_means(rows: Sequence[dict], metric: str) -> dict[int, float]:
    by_seed: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(metric) is not None:
            by_seed[int(row["seed"])].append(float(row[metric]))
    return {seed: float(np.mean(v)) for seed, v in sorted(by_seed.items())}


def summarize_group(rows: Sequence[dict], metric: str) -> dict:
    """Mean and sample std over seeds of the per-seed case mean; numbers of seeds and cases."""
    means = list(per_seed_means(rows, metric).values())
    if not means:
        return {"mean": None, "std": None, "n_seeds": 0, "n_cases": 0}
    return {"mean": float(np.mean(means)), "std": float(np.std(means, ddof=1)) if len(means) > 1 else None,
            "n_seeds": len(means), "n_cases": len({case_id(r) for r in rows})}


def paired_seed_differences(rows: Sequence[dict], baseline: Sequence[dict], metric: str) -> dict[int, float]:
    """Per seed, the mean over shared test cases of (arm − baseline); a baseline row without a
    seed (``seed`` None) pairs with every seed."""
    base: dict[tuple, float] = {}
    for row in baseline:
        if row.get(metric) is not None:
            base[(None if row.get("seed") in (None, "") else int(row["seed"]), case_id(row))] = float(row[metric])
    diffs: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(metric) is None:
            continue
        seed = int(row["seed"])
        other = base.get((seed, case_id(row)), base.get((None, case_id(row))))
        if other is not None:
            diffs[seed].append(float(row[metric]) - other)
    return {seed: float(np.mean(v)) for seed, v in sorted(diffs.items()) if v}


def compare(rows: Sequence[dict], baseline: Sequence[dict], metric: str, confidence: float = 0.95) -> dict:
    """Paired difference of an arm group to its baseline, its interval and the verdict."""
    diffs = paired_seed_differences(rows, baseline, metric)
    if not diffs:
        return {"metric": metric, "difference": None, "low": None, "high": None, "n_seeds": 0, "verdict": TOO_FEW}
    interval = t_interval(list(diffs.values()), confidence)
    return {"metric": metric, "difference": interval.mean, "low": interval.low, "high": interval.high,
            "n_seeds": interval.n, "verdict": verdict(interval, HIGHER_IS_BETTER.get(metric, True)),
            "text": interval.text()}


def scratch_comparisons(rows: Sequence[dict], metrics: Sequence[str], confidence: float = 0.95) -> list[dict]:
    """Every pretrained arm group against scratch of the same structure, model, mode and budget."""
    grouped = groups(r for r in rows if r["method"] != "otsu")
    out = []
    for key, group in sorted(grouped.items()):
        fields = dict(zip(GROUP_FIELDS, key))
        if fields["method"] == "scratch":
            continue
        base_key = tuple(fields[f] if f != "method" else "scratch" for f in GROUP_FIELDS)
        baseline = grouped.get(base_key, [])
        for metric in metrics:
            out.append({**fields, "baseline": "scratch", **compare(group, baseline, metric, confidence)})
    return out


def threshold_comparisons(rows: Sequence[dict], metrics: Sequence[str], confidence: float = 0.95) -> list[dict]:
    """Every arm group against the Otsu threshold on the same test cases."""
    otsu = [r for r in rows if r["method"] == "otsu"]
    out = []
    for key, group in sorted(groups(r for r in rows if r["method"] != "otsu").items()):
        for metric in metrics:
            out.append({**dict(zip(GROUP_FIELDS, key)), "baseline": "otsu", **compare(group, otsu, metric, confidence)})
    return out


def best_team_comparisons(rows: Sequence[dict], metrics: Sequence[str], confidence: float = 0.95) -> list[dict]:
    """Every non-team pretrained method against the best team method of the same structure, mode
    and budget (any backbone), per metric: "best" is the highest (lowest for error counts) mean
    over seeds on these very rows. Picking the winner on the data it is compared on favours the
    team method, so a "better" verdict here is conservative."""
    grouped = groups(r for r in rows if r["method"] != "otsu")
    out = []
    for key, group in sorted(grouped.items()):
        fields = dict(zip(GROUP_FIELDS, key))
        if fields["method"] in TEAM_METHODS or fields["method"] == "scratch":
            continue
        rivals = {k: g for k, g in grouped.items()
                  if dict(zip(GROUP_FIELDS, k))["method"] in TEAM_METHODS
                  and all(dict(zip(GROUP_FIELDS, k))[f] == fields[f] for f in ("structure", "mode", "labels"))}
        for metric in metrics:
            higher = HIGHER_IS_BETTER.get(metric, True)
            scored = [(summarize_group(g, metric)["mean"], k) for k, g in rivals.items()]
            scored = [(m, k) for m, k in scored if m is not None]
            if not scored:
                continue
            _, best = max(scored, key=lambda mk: mk[0] if higher else -mk[0])
            best_fields = dict(zip(GROUP_FIELDS, best))
            out.append({**fields, "baseline": f"best team method ({best_fields['method']}, {best_fields['model']})",
                        "baseline_method": best_fields["method"], **compare(group, rivals[best], metric, confidence)})
    return out
