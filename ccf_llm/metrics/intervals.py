# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Confidence intervals and paired tests for AUC, UAUC and RelaImpr: a bootstrap over users.

Rows of one user are not independent (UAUC is a mean over users, and a user's rows share a history), so the unit
resampled is the user: each resample draws users with replacement and weights every row by how often its user was
drawn. All models are scored on the same resamples, so differences between them are paired. scipy's `bootstrap`
resamples rows, not clusters of rows, hence this module; the AUC of each resample is scikit-learn's
`roc_auc_score` with those weights, computed for all resamples at once (`resampled_auc`: one sort per model instead of
one `roc_auc_score` call per resample, ~10x faster, equal to it to rounding).
"""

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import ttest_1samp, ttest_ind
from sklearn.metrics import roc_auc_score

from .ctr_auc.ctr_auc import per_user_auc, rela_impr


def seeds_interval(
    values: Sequence[float], confidence: float = 0.95, *, other: Sequence[float] | None = None
) -> tuple[list[float], float]:
    """
    The spread between seeds of one quantity (e.g. an AUC difference, one value per seed from independent runs): the
    Student-t interval of its mean and the two-sided p-value against 0 (`scipy.stats.ttest_1samp`, seeds - 1 degrees
    of freedom; the seeds are the sample, each value's own sampling noise is ignored). With `other`, a second set of
    independent seeds of the same quantity (e.g. the runs in another dtype), the interval and p are those of
    mean(values) - mean(other) by Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`); one set without spread
    leaves it defined, with the other set's seeds - 1 degrees of freedom. With no spread in any set t is undefined and
    the mean (or the difference of the two) is exact: the interval is that value, p 1.0 at 0 and 0.0 elsewhere.
    """
    groups = [values] if other is None else [values, other]
    if min(map(len, groups)) < 2:
        raise ValueError(
            f"an interval between seeds needs at least 2 seeds per set, got {[len(g) for g in groups]}"
        )
    if max(np.ptp(g) for g in groups) == 0:
        exact = float(values[0] - (0.0 if other is None else other[0]))
        return [exact] * 2, 1.0 if exact == 0 else 0.0
    with warnings.catch_warnings():
        # scipy warns of cancellation in the variance of a set of equal values: that variance is 0, as it should be
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        test = ttest_1samp(values, 0.0) if other is None else ttest_ind(values, other, equal_var=False)
    low, high = test.confidence_interval(confidence)
    return [float(low), float(high)], float(test.pvalue)


def _user_counts(users: np.ndarray, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique users, each row's index into them, and `(n_resamples, n_users)` draw counts per resample."""
    unique, index = np.unique(users, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(unique), size=(n_resamples, len(unique)))
    counts = np.zeros((n_resamples, len(unique)))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), len(unique)), draws.ravel()), 1.0)
    return unique, index, counts


def resampled_auc(labels: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """
    `roc_auc_score(labels, values, sample_weight=w)` for every row `w` of `weights` (`(resamples, rows)`), at once:
    the weighted share of (positive, negative) pairs the scores order correctly, tied scores counting one half
    (the area under the weighted ROC curve). The rows are sorted once; each resample's weights are summed per
    distinct score, positives and negatives apart, and every positive group meets the negative weight below it.
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first row of each distinct score
    positive = labels[order] == 1
    sorted_weights = weights[:, order]
    pos = np.add.reduceat(
        np.where(positive, sorted_weights, 0.0), starts, axis=1
    )  # (resamples, distinct scores)
    neg = np.add.reduceat(np.where(positive, 0.0, sorted_weights), starts, axis=1)
    pairs = pos.sum(1) * neg.sum(1)
    if not pairs.all():
        raise ValueError("a resample holds only one class: the AUC is undefined (too few rows or users)")
    return (pos * (np.cumsum(neg, axis=1) - 0.5 * neg)).sum(1) / pairs


def user_bootstrap(
    scores: Mapping[str, np.ndarray],
    labels,
    users,
    pairs: list[tuple[str | tuple[str, ...], str | tuple[str, ...]]] = (),
    base_auc: Mapping[str, str] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """
    Percentile intervals of AUC and UAUC for every model in `scores` (name -> scores of the same rows), and paired
    comparisons.

    Args:
        scores: one score array per model, all over the same rows (`labels`, `users`).
        pairs: `(a, b)` pairs compared on every resample: the difference of AUC (and UAUC) `a - b`, its interval and
            a two-sided bootstrap p-value (twice the share of resamples on the other side of 0, within
            `[1 / n_resamples, 1]`). A side may be a tuple of models (the runs of one method with several seeds):
            it stands for their mean AUC (and UAUC) on each resample, so the interval of a seed-averaged
            difference holds the test users' sampling noise once, not once per seed; its key is
            `"mean(a1, a2) - mean(b1, b2)"`. That interval leaves out the spread between seeds, so such a pair also
            gets `"between_seeds"`: each seed's own AUC difference (tuples of equal length pair their models by
            position, seed with seed; a single model on the other side is every seed's partner) and the
            Student-t interval and p-value of their mean (`scipy.stats.ttest_1samp`, seeds - 1 degrees of
            freedom), which treats the seeds as the sample and ignores the users' noise. It is absent for one
            seed or for tuples of unequal length.
        base_auc: model -> the model whose AUC is its RelaImpr base (Eq. 6), e.g. `{"gate_mf": "mf"}`; gives the
            RelaImpr interval.
    Returns:
        `{"models": {name: {"auc", "auc_ci", "uauc", "uauc_ci"[, "rela_impr", "rela_impr_ci"]}},
        "pairs": {"a - b": {"auc_diff", "auc_diff_ci", "auc_p", "uauc_diff", "uauc_diff_ci", "uauc_p"
        [, "between_seeds": {"auc_diffs", "auc_diff_ci", "auc_p"}]}},
        "n_resamples", "confidence", "users"}`.
    """
    labels, users = np.asarray(labels).astype(np.int64), np.asarray(users)
    unique, index, counts = _user_counts(users, n_resamples, seed)
    weights = counts[:, index]  # (resamples, rows)
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    aucs, uaucs = {}, {}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != labels.shape:
            raise ValueError(f"scores of {name!r} have shape {values.shape}, labels {labels.shape}")
        aucs[name] = resampled_auc(labels, values, weights)
        per_user = per_user_auc(values, labels, users)
        where = np.searchsorted(unique, per_user.index.to_numpy())
        user_weights = counts[:, where]
        uaucs[name] = (user_weights @ per_user.to_numpy()) / user_weights.sum(1)
        uaucs[name + "_point"] = float(per_user.mean())

    def interval(samples: np.ndarray) -> list[float]:
        return [float(np.percentile(samples, lo)), float(np.percentile(samples, hi))]

    models = {}
    for name, values in scores.items():
        models[name] = {
            "auc": float(roc_auc_score(labels, values)),
            "auc_ci": interval(aucs[name]),
            "uauc": uaucs[name + "_point"],
            "uauc_ci": interval(uaucs[name]),
        }
    for name, base in (base_auc or {}).items():
        models[name]["rela_impr"] = rela_impr(models[name]["auc"], models[base]["auc"])
        models[name]["rela_impr_ci"] = interval(rela_impr(aucs[name], aucs[base]))

    def p_value(diff: np.ndarray) -> float:
        return float(min(max(2 * min((diff <= 0).mean(), (diff >= 0).mean()), 1 / n_resamples), 1.0))

    def side(names: str | tuple[str, ...]) -> tuple[str, dict[str, np.ndarray | float]]:
        """A pair's side: its name in the key, and its point figures and resampled ones (the mean over a tuple)."""
        group = (names,) if isinstance(names, str) else tuple(names)
        label = group[0] if isinstance(names, str) else f"mean({', '.join(group)})"
        return label, {
            "auc": np.mean([models[n]["auc"] for n in group]),
            "uauc": np.mean([models[n]["uauc"] for n in group]),
            "aucs": np.mean([aucs[n] for n in group], axis=0),
            "uaucs": np.mean([uaucs[n] for n in group], axis=0),
        }

    def between_seeds(a: str | tuple[str, ...], b: str | tuple[str, ...]) -> dict | None:
        """Each seed's AUC difference and the t-interval of their mean; None without two seeds to pair."""
        group_a, group_b = ((n,) if isinstance(n, str) else tuple(n) for n in (a, b))
        seeds = max(len(group_a), len(group_b))
        if seeds < 2 or min(len(group_a), len(group_b)) not in (1, seeds):
            return None
        # a single model is every seed's partner
        group_a, group_b = (g * seeds if len(g) == 1 else g for g in (group_a, group_b))
        diffs = [models[x]["auc"] - models[y]["auc"] for x, y in zip(group_a, group_b, strict=True)]
        ci, p = seeds_interval(diffs, confidence)
        return {"auc_diffs": [float(d) for d in diffs], "auc_diff_ci": ci, "auc_p": p}

    compared = {}
    for a, b in pairs:
        seeds = between_seeds(a, b)
        (name_a, a), (name_b, b) = side(a), side(b)
        auc_diff, uauc_diff = a["aucs"] - b["aucs"], a["uaucs"] - b["uaucs"]
        compared[f"{name_a} - {name_b}"] = {
            "auc_diff": float(a["auc"] - b["auc"]),
            "auc_diff_ci": interval(auc_diff),
            "auc_p": p_value(auc_diff),
            "uauc_diff": float(a["uauc"] - b["uauc"]),
            "uauc_diff_ci": interval(uauc_diff),
            "uauc_p": p_value(uauc_diff),
        }
        if seeds is not None:
            compared[f"{name_a} - {name_b}"]["between_seeds"] = seeds
    return {
        "models": models,
        "pairs": compared,
        "n_resamples": n_resamples,
        "confidence": confidence,
        "users": len(unique),
    }


__all__ = ["seeds_interval", "user_bootstrap"]
