"""ccf_llm.metrics: AUC / UAUC (the packaged evaluate metric), RelaImpr, and user_bootstrap's intervals and paired
tests from a bootstrap over users."""

import warnings

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from ccf_llm.metrics import load_ctr_metric, rela_impr, seeds_interval, uauc, user_bootstrap
from ccf_llm.metrics.intervals import _user_counts, resampled_auc


def ctr_rows(users=200, rows_per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(1, users + 1), rows_per_user)
    label = rng.integers(0, 2, size=len(user))
    signal = label + rng.normal(0, 1.5, size=len(user))  # AUC ~0.68
    return user, label, signal, rng.normal(size=len(user))


def test_point_estimates_are_the_plain_metrics_and_inside_their_intervals():
    user, label, signal, noise = ctr_rows()
    out = user_bootstrap({"good": signal, "random": noise}, label, user, n_resamples=200)
    for name, values in (("good", signal), ("random", noise)):
        model = out["models"][name]
        assert model["auc"] == pytest.approx(roc_auc_score(label, values))
        assert model["uauc"] == pytest.approx(uauc(values, label, user))
        assert model["auc_ci"][0] < model["auc"] < model["auc_ci"][1]
        assert model["uauc_ci"][0] < model["uauc"] < model["uauc_ci"][1]
    assert out["models"]["good"]["auc_ci"][0] > 0.62 and out["models"]["random"]["auc_ci"][0] < 0.5
    assert out["users"] == 200 and out["n_resamples"] == 200


def test_paired_difference_separates_a_real_gap_and_not_a_null_one():
    user, label, signal, noise = ctr_rows()
    out = user_bootstrap({"good": signal, "same": signal.copy(), "random": noise}, label, user,
                         pairs=[("good", "random"), ("good", "same")], n_resamples=300)  # fmt: skip
    gap = out["pairs"]["good - random"]
    assert gap["auc_diff_ci"][0] > 0.1 and gap["auc_p"] == pytest.approx(1 / 300)
    assert gap["uauc_diff_ci"][0] > 0.05 and gap["uauc_p"] < 0.01
    null = out["pairs"]["good - same"]
    assert null["auc_diff"] == 0 and null["auc_diff_ci"] == [0.0, 0.0] and null["auc_p"] == 1.0


def test_a_pair_of_seed_groups_compares_their_mean_auc_on_each_resample():
    user, label, signal, noise = ctr_rows()
    rng = np.random.default_rng(7)
    seeds = {f"a{s}": signal + rng.normal(0, 2.0, size=len(user)) for s in range(3)}  # one method, 3 seeds
    out = user_bootstrap({**seeds, "b": signal + 2.5 * noise}, label, user, n_resamples=300,
                         pairs=[*((a, "b") for a in seeds), (tuple(seeds), "b")])  # fmt: skip
    single = [out["pairs"][f"{a} - b"] for a in seeds]
    mean = out["pairs"]["mean(a0, a1, a2) - b"]
    assert mean["auc_diff"] == pytest.approx(np.mean([d["auc_diff"] for d in single]))
    assert mean["uauc_diff"] == pytest.approx(np.mean([d["uauc_diff"] for d in single]))
    widths = [d["auc_diff_ci"][1] - d["auc_diff_ci"][0] for d in single]
    # each seed's own noise partly cancels in the mean: its interval is narrower than any single seed's
    assert mean["auc_diff_ci"][1] - mean["auc_diff_ci"][0] < min(widths)
    assert min(d["auc_diff_ci"][0] for d in single) < mean["auc_diff_ci"][0] < mean["auc_diff"]
    # the spread between seeds: each seed's own difference, and a t-interval over the 3 of them (2 df)
    seeds_only = mean["between_seeds"]
    assert seeds_only["auc_diffs"] == pytest.approx([d["auc_diff"] for d in single])
    spread = np.std(seeds_only["auc_diffs"], ddof=1) / np.sqrt(3)
    assert seeds_only["auc_diff_ci"] == pytest.approx(
        [mean["auc_diff"] - 4.302653 * spread, mean["auc_diff"] + 4.302653 * spread], rel=1e-5
    )
    assert 0 < seeds_only["auc_p"] < 1
    assert "between_seeds" not in single[0]  # one seed on each side: nothing to spread


def test_seed_groups_pair_their_models_by_position():
    user, label, signal, noise = ctr_rows()
    # a lead in seed 0 only (a0 - b0 = +), none in seeds 1 and 2 (the same scores)
    scores = {"a0": signal, "b0": signal + 3.0 * noise, "a1": signal + noise, "b1": signal + noise,
              "a2": noise, "b2": noise.copy()}  # fmt: skip
    out = user_bootstrap(
        scores, label, user, n_resamples=50, pairs=[(("a0", "a1", "a2"), ("b0", "b1", "b2"))]
    )
    diffs = out["pairs"]["mean(a0, a1, a2) - mean(b0, b1, b2)"]["between_seeds"]["auc_diffs"]
    assert diffs[0] > 0.05 and diffs[1:] == [0.0, 0.0]
    unequal = user_bootstrap(scores, label, user, n_resamples=50, pairs=[(("a0", "a1"), ("b0", "b1", "b2"))])
    same = user_bootstrap(scores, label, user, n_resamples=50, pairs=[(("a1", "a2"), ("b1", "b2"))])
    # the same scores in every seed: no spread, and a t-statistic that would be 0 / 0
    assert same["pairs"]["mean(a1, a2) - mean(b1, b2)"]["between_seeds"] == {
        "auc_diffs": [0.0, 0.0], "auc_diff_ci": [0.0, 0.0], "auc_p": 1.0
    }  # fmt: skip
    # groups of unequal size cannot be paired seed with seed
    assert "between_seeds" not in unequal["pairs"]["mean(a0, a1) - mean(b0, b1, b2)"]


def test_seeds_interval_is_the_t_interval_of_the_mean_over_seeds():
    # mean 0.02, sd 0.01 over 3 seeds: half-width t(0.975, 2) * 0.01 / sqrt(3)
    ci, p = seeds_interval([0.01, 0.02, 0.03])
    half = 4.302653 * 0.01 / np.sqrt(3)
    assert ci == pytest.approx([0.02 - half, 0.02 + half], rel=1e-6)
    assert p == pytest.approx(0.0742, abs=5e-4)  # t = 0.02 / (0.01 / sqrt 3) = 3.46, 2 df, two-sided
    wide, p_wide = seeds_interval([0.05, -0.002, 0.035])  # one seed without a lead: the interval crosses 0
    assert wide[0] < 0 < wide[1] and p_wide > 0.05
    # no spread: the mean is exact
    assert seeds_interval([0.01, 0.01]) == ([0.01, 0.01], 0.0)
    assert seeds_interval([0.0, 0.0]) == ([0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match=r"at least 2 seeds per set, got \[1\]"):
        seeds_interval([0.01])


def test_seeds_interval_between_two_sets_of_seeds_is_welch():
    # means 0.03 and 0.05, variances 1e-4 and 4e-4 over 3 seeds each: se = sqrt(1e-4 / 3 + 4e-4 / 3)
    a, b = [0.02, 0.03, 0.04], [0.03, 0.05, 0.07]
    ci, p = seeds_interval(a, other=b)
    se = np.sqrt(5e-4 / 3)
    # Welch-Satterthwaite: (5e-4 / 3)^2 / ((1e-4 / 3)^2 / 2 + (4e-4 / 3)^2 / 2) = 2.94 degrees of freedom
    df = (5e-4 / 3) ** 2 / ((1e-4 / 3) ** 2 / 2 + (4e-4 / 3) ** 2 / 2)
    half = scipy.stats.t.ppf(0.975, df) * se
    assert ci == pytest.approx([-0.02 - half, -0.02 + half], rel=1e-6)
    # 3 seeds each: a 0.02 gap is within their spread
    assert p == pytest.approx(2 * scipy.stats.t.sf(0.02 / se, df), rel=1e-6) and p > 0.1
    # the order of the sets is the sign of the difference
    flipped, p_flipped = seeds_interval(b, other=a)
    assert flipped == pytest.approx([-ci[1], -ci[0]]) and p_flipped == pytest.approx(p)
    # one set without spread: Welch with the other's seeds - 1 = 2 degrees of freedom, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one, _ = seeds_interval(b, other=[0.06, 0.06])
    half = scipy.stats.t.ppf(0.975, 2) * np.sqrt(4e-4 / 3)
    assert one == pytest.approx([-0.01 - half, -0.01 + half], rel=1e-6)
    assert seeds_interval([0.05, 0.05], other=[0.02, 0.02]) == (pytest.approx([0.03, 0.03]), 0.0)
    with pytest.raises(ValueError, match=r"got \[3, 1\]"):
        seeds_interval(a, other=[0.01])


def test_one_resample_weights_rows_as_if_the_drawn_users_were_copied():
    user, label, signal, _ = ctr_rows(users=30)
    unique, index, counts = _user_counts(user, n_resamples=1, seed=4)
    copies = np.repeat(np.arange(len(user)), counts[0, index].astype(int))
    weighted = roc_auc_score(label, signal, sample_weight=counts[0, index])
    assert weighted == pytest.approx(roc_auc_score(label[copies], signal[copies]))
    assert counts.sum() == len(unique)


def test_resampled_auc_equals_weighted_roc_auc_score_with_ties_and_zero_weights():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 2, size=500)
    values = np.round(label * 0.4 + rng.normal(size=500), 1)  # many tied scores, across both classes
    weights = rng.poisson(1.0, size=(20, 500)).astype(float)  # bootstrap counts: many rows weigh 0
    expected = [roc_auc_score(label, values, sample_weight=w) for w in weights]
    np.testing.assert_allclose(resampled_auc(label, values, weights), expected, rtol=0, atol=1e-12)
    assert len(np.unique(values)) < 100 and (weights == 0).mean() > 0.3
    with pytest.raises(ValueError, match="only one class"):
        resampled_auc(label, values, np.where(label == 1, 0.0, 1.0)[None])


def test_intervals_narrow_with_more_users_and_rela_impr_has_one():
    found = {}
    for users in (800, 50):
        user, label, signal, noise = ctr_rows(users=users)
        weak = label + 3 * noise  # a weaker base model, AUC ~0.58
        found[users] = user_bootstrap({"m": signal, "base": weak}, label, user, base_auc={"m": "base"},
                                      n_resamples=200)["models"]  # fmt: skip
    width = {users: m["m"]["auc_ci"][1] - m["m"]["auc_ci"][0] for users, m in found.items()}
    assert width[800] < 0.6 * width[50]  # ~1/sqrt(16) in theory
    model, base = found[800]["m"], found[800]["base"]
    assert model["rela_impr"] == pytest.approx(rela_impr(model["auc"], base["auc"]))
    assert model["rela_impr_ci"][0] < model["rela_impr"] < model["rela_impr_ci"][1]


def test_mismatched_scores_are_refused():
    user, label, signal, _ = ctr_rows(users=10)
    with pytest.raises(ValueError, match="scores of 'm' have shape"):
        user_bootstrap({"m": signal[:-1]}, label, user)


def test_uauc_skips_single_row_and_single_class_users_and_matches_sklearn():
    scores = np.array([0.9, 0.1, 0.4, 0.8, 0.3, 0.5, 0.7, 0.2])
    labels = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    users = np.array([1, 1, 2, 2, 2, 3, 4, 4])  # user 3: one row; user 4: both labels
    per_user = [roc_auc_score(labels[users == u], scores[users == u]) for u in (1, 2, 4)]
    assert uauc(scores, labels, users) == pytest.approx(np.mean(per_user))
    single_class = np.array([1, 1, 2, 2, 2, 3, 5, 5])  # user 5: two rows, same label 0/1? labels 0, 1 -> keep
    labels_sc = labels.copy()
    labels_sc[6:] = 1  # user 5 only positives: skipped
    expected = np.mean(
        [roc_auc_score(labels_sc[single_class == u], scores[single_class == u]) for u in (1, 2)]
    )
    assert uauc(scores, labels_sc, single_class) == pytest.approx(expected)
    metric = load_ctr_metric()
    result = metric.compute(predictions=scores, references=labels, users=users)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["uauc"] == pytest.approx(np.mean(per_user))
    assert rela_impr(0.7427, 0.5959) == pytest.approx(153.08, abs=0.01)  # Table 3, CCF-LLM (LightGCN)
