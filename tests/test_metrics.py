from __future__ import annotations

import itertools
import math

import numpy as np

from trainer.core.metrics import auc, logloss


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1)  # coarse, so ties are common
    assert math.isclose(auc(labels, scores), pairwise_auc(labels, scores), rel_tol=1e-12)


def test_auc_is_nan_with_one_class() -> None:
    assert math.isnan(auc(np.ones(5), np.arange(5.0)))


def test_logloss_matches_formula() -> None:
    y = np.array([1, 0, 1])
    p = np.array([0.9, 0.2, 0.4])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3
    assert math.isclose(logloss(y, p), expected, rel_tol=1e-12)
