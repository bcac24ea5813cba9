"""Linear probes on embeddings: scikit-learn classifiers with cross-validation, a layer sweep, a k-mer baseline.

A linear probe (standardised features -> logistic regression or a linear SVM) is the usual way to ask what an
embedding knows: it adds no capacity of its own, so better accuracy means a better representation. Pass ``groups``
(e.g. strain or chromosome of each window) whenever nearby windows share information, so that no group is in both
the training and the test folds; otherwise cross-validation overstates what transfers to new genomes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from dna_mamba.baselines import kmer_frequencies
from dna_mamba.tokenizer import encode

Classifier = Literal["logreg", "linear_svm"]
CLASSIFIERS = ("logreg", "linear_svm")


@dataclass
class CrossValidationReport:
    """Cross-validated accuracy of one classifier, and that classifier refitted on all the data.

    Attributes:
        classifier: ``"logreg"`` or ``"linear_svm"``.
        accuracy: mean accuracy over the test folds.
        accuracy_std: its standard deviation over folds.
        balanced_accuracy: mean over folds of the per-class-averaged recall (robust to unequal class sizes).
        fold_accuracies: accuracy of each test fold.
        splitter: how folds were made, e.g. ``"GroupKFold(5)"``.
        n_samples, n_features, n_classes: the data's size.
        estimator: the pipeline refitted on all samples, ready for ``predict``.
    """

    classifier: str
    accuracy: float
    accuracy_std: float
    balanced_accuracy: float
    fold_accuracies: list[float]
    splitter: str
    n_samples: int
    n_features: int
    n_classes: int
    estimator: Pipeline


@dataclass
class HeldOutReport:
    """A classifier trained on one set (e.g. some strains) and scored on another (held-out strains).

    Attributes:
        accuracy, balanced_accuracy: on the test set.
        labels: class labels, in the order of the confusion matrix rows and columns.
        confusion: ``(n_classes, n_classes)`` counts, rows = true class, columns = predicted.
        estimator: the fitted pipeline.
    """

    classifier: str
    accuracy: float
    balanced_accuracy: float
    labels: np.ndarray
    confusion: np.ndarray
    estimator: Pipeline


def make_classifier(classifier: Classifier = "logreg", *, C: float = 1.0, seed: int = 0) -> Pipeline:
    """A standardise-then-linear-classifier pipeline.

    Standardising matters: embedding features differ in scale by orders of magnitude across layers, and both
    classifiers' regularisation assumes comparable scales.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if classifier == "logreg":
        head = LogisticRegression(C=C, max_iter=5000, random_state=seed)
    elif classifier == "linear_svm":
        head = LinearSVC(C=C, max_iter=20000, random_state=seed)
    else:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    return make_pipeline(StandardScaler(), head)


def fit_classifier(
    features: np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    classifier: Classifier = "logreg",
    cv: int = 5,
    groups: Sequence | np.ndarray | None = None,
    C: float = 1.0,
    seed: int = 0,
) -> CrossValidationReport:
    """Cross-validate a linear classifier on embeddings, then refit it on all of them.

    Args:
        features: one row per sample, e.g. pooled embeddings of one layer.
        labels: one class label per sample (any hashable values).
        classifier: ``"logreg"`` (logistic regression) or ``"linear_svm"``.
        cv: number of folds (lowered to the number of groups, or to the smallest class's size, when those are
            fewer).
        groups: a group per sample (strain, chromosome, ...); folds then never split a group (``GroupKFold``).
            Without groups, folds are stratified by label and shuffled with ``seed``.
        C: inverse regularisation strength.
        seed: for fold shuffling and the solvers.

    Shapes:
        features: (n_samples, n_features); labels, groups: (n_samples,).

    Raises:
        ValueError: features not 2-D, mismatched lengths, fewer than two classes, or too few samples or groups for
            two folds.
    """
    features, labels = _check_xy(features, labels)
    n_classes = len(np.unique(labels))
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(f"{len(groups)} groups for {len(labels)} samples")
        folds = min(cv, len(np.unique(groups)))
        if folds < 2:
            raise ValueError("cross-validation by groups needs at least two groups")
        splitter = GroupKFold(n_splits=folds)
    else:
        folds = min(cv, int(np.unique(labels, return_counts=True)[1].min()))
        if folds < 2:
            raise ValueError("every class needs at least two samples for cross-validation")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pipeline = make_classifier(classifier, C=C, seed=seed)
    scores = cross_validate(pipeline, features, labels, groups=groups, cv=splitter,
                            scoring=("accuracy", "balanced_accuracy"))
    fold_accuracies = [float(a) for a in scores["test_accuracy"]]
    return CrossValidationReport(
        classifier=classifier,
        accuracy=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        balanced_accuracy=float(np.mean(scores["test_balanced_accuracy"])),
        fold_accuracies=fold_accuracies,
        splitter=f"{type(splitter).__name__}({folds})",
        n_samples=len(labels),
        n_features=features.shape[1],
        n_classes=n_classes,
        estimator=pipeline.fit(features, labels),
    )


def evaluate_held_out(
    train_features: np.ndarray,
    train_labels: Sequence | np.ndarray,
    test_features: np.ndarray,
    test_labels: Sequence | np.ndarray,
    *,
    classifier: Classifier = "logreg",
    C: float = 1.0,
    seed: int = 0,
) -> HeldOutReport:
    """Train on one set and score on another, e.g. training strains vs held-out strains.

    Shapes:
        train_features: (n_train, n_features); test_features: (n_test, n_features); labels: (n,).

    Raises:
        ValueError: features not 2-D, mismatched lengths or widths, or fewer than two training classes.
    """
    train_features, train_labels = _check_xy(train_features, train_labels)
    test_features, test_labels = _check_xy(test_features, test_labels, need_two_classes=False)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train has {train_features.shape[1]} features, test has {test_features.shape[1]}")
    estimator = make_classifier(classifier, C=C, seed=seed).fit(train_features, train_labels)
    predicted = estimator.predict(test_features)
    classes = np.unique(np.concatenate([train_labels, test_labels]))
    return HeldOutReport(
        classifier=classifier,
        accuracy=float(accuracy_score(test_labels, predicted)),
        balanced_accuracy=float(balanced_accuracy_score(test_labels, predicted)),
        labels=classes,
        confusion=confusion_matrix(test_labels, predicted, labels=classes),
        estimator=estimator,
    )


def sweep_layers(features: np.ndarray, labels: Sequence | np.ndarray, **kwargs) -> list[CrossValidationReport]:
    """:func:`fit_classifier` on each layer of a layer sweep (``embed(..., layers=[...])``), in layer-axis order.

    Shapes:
        features: (n_samples, n_layers, D).
    """
    features = np.asarray(features)
    if features.ndim != 3:
        raise ValueError(f"a layer sweep has shape (n_samples, n_layers, D), got {features.shape}")
    return [fit_classifier(features[:, k], labels, **kwargs) for k in range(features.shape[1])]


def kmer_features(sequences: Iterable[str | np.ndarray], ks: Sequence[int] = (4, 5, 6)) -> np.ndarray:
    """k-mer frequency vectors (the composition baseline): each k's frequencies, concatenated.

    k-mers containing N are left out (see :func:`dna_mamba.baselines.kmer_frequencies`).

    Shapes:
        sequences: N strings or (L_i,) token arrays -> (N, sum of 4**k) float64.
    """
    rows = []
    for sequence in sequences:
        ids = encode(sequence) if isinstance(sequence, str) else np.asarray(sequence)
        rows.append(np.concatenate([kmer_frequencies(ids, k) for k in ks]))
    if not rows:
        raise ValueError("no sequences")
    return np.stack(rows)


def _check_xy(features, labels, need_two_classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n_samples, n_features), got shape {features.shape}; "
                         "pick one layer of a layer sweep, e.g. values[:, k]")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"{labels.shape[0] if labels.ndim else 1} labels for {features.shape[0]} samples")
    if need_two_classes and len(np.unique(labels)) < 2:
        raise ValueError("need at least two classes")
    return features, labels
