"""Supervised variant-effect prediction: model scores and embeddings as features for a scikit-learn classifier.

Zero-shot LLRs rank variants without labels; with labels, a logistic regression over the LLRs, the embedding
distances and (optionally) the (alt - ref) embedding vectors learns how to weigh them. Cross-validation is
stratified, so every fold keeps the class balance, and features are standardised inside each fold (the scaler is
fitted on the training folds only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dna_mamba.tasks.variants import ScoreResult

SCORE_FEATURES = ("llr", "llr_fwd", "llr_rc", "emb_cos", "emb_l2")


def build_feature_matrix(result: ScoreResult, *, columns: Sequence[str] = SCORE_FEATURES,
                         include_embedding_diffs: bool = False) -> tuple[np.ndarray, list[str]]:
    """Features per allele from a :class:`ScoreResult`.

    Args:
        result: scores (with ``keep_embedding_diffs=True`` in its config to use embedding vectors).
        columns: score columns to use; those absent from the table (e.g. ``llr_rc`` when only the forward strand
            was scored, or all-NaN columns) are left out.
        include_embedding_diffs: append the (alt - ref) embedding vector of each allele.

    Returns:
        ``(X, names)``: (n_alleles, n_features) float64 with NaN rows for skipped alleles, and feature names.

    Raises:
        ValueError: embedding differences were asked for but not computed.
    """
    table = result.table
    names = [c for c in columns if c in table.columns and table[c].notna().any()]
    parts = [table[names].to_numpy(dtype=np.float64)]
    if include_embedding_diffs:
        if result.embedding_diffs is None:
            raise ValueError("no embedding differences: score with ScoringConfig(keep_embedding_diffs=True)")
        parts.append(result.embedding_diffs.astype(np.float64))
        names += [f"emb_diff_{i}" for i in range(result.embedding_diffs.shape[1])]
    return np.concatenate(parts, axis=1), names


@dataclass
class CrossValidationResult:
    """Per-fold AUROC and out-of-fold probabilities of a cross-validated classifier.

    Attributes:
        fold_auroc: AUROC of each test fold.
        oof_probability: out-of-fold probability of the positive class for every used row (NaN for dropped rows).
        used: boolean mask of the rows that had finite features and a label.
        feature_names: the features' names.
    """

    fold_auroc: list[float]
    oof_probability: np.ndarray
    used: np.ndarray
    feature_names: list[str]

    @property
    def mean_auroc(self) -> float:
        return float(np.mean(self.fold_auroc))

    @property
    def std_auroc(self) -> float:
        return float(np.std(self.fold_auroc))


def cross_validate_classifier(features: np.ndarray, labels: Sequence | np.ndarray, *, n_splits: int = 5,
                              seed: int = 0, feature_names: Sequence[str] | None = None,
                              C: float = 1.0) -> CrossValidationResult:
    """Stratified k-fold cross-validation of standardised logistic regression.

    Args:
        features: (n, f) matrix; rows with any non-finite value are dropped (skipped variants).
        labels: n binary labels (bool, 0/1, or two distinct values; the larger/True one is positive).
        n_splits: folds (reduced to the size of the smaller class if needed, minimum 2).
        seed: shuffling seed of the folds.
        feature_names: kept in the result.
        C: inverse L2 regularisation strength.

    Raises:
        ValueError: fewer than two classes, or too few rows of the smaller class for two folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64)
    labels = pd.Series(np.asarray(labels))
    classes = np.sort(labels.dropna().unique())
    if len(classes) != 2:
        raise ValueError(f"need exactly two label classes, got {list(classes)}")
    y_all = (labels == classes[1]).to_numpy()
    used = np.isfinite(features).all(axis=1) & labels.notna().to_numpy()
    X, y = features[used], y_all[used]
    smaller = int(min(y.sum(), (~y).sum()))
    if smaller < 2:
        raise ValueError(f"the smaller class has {smaller} usable rows; need at least 2 for cross-validation")
    folds = StratifiedKFold(n_splits=min(n_splits, smaller), shuffle=True, random_state=seed)
    oof = np.full(len(y), np.nan)
    aurocs = []
    for train, test in folds.split(X, y):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        classifier.fit(X[train], y[train])
        oof[test] = classifier.predict_proba(X[test])[:, 1]
        aurocs.append(float(roc_auc_score(y[test], oof[test])))
    probability = np.full(len(features), np.nan)
    probability[used] = oof
    return CrossValidationResult(aurocs, probability, used, list(feature_names or []))
