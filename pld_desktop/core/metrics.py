"""Classification metrics (scikit-learn) and latency percentiles for one evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# scikit-learn is imported where it is used: its import takes ~1.8 s, more than half of a `pld init`, `status` or
# `export`, which never score anything (test_cli_imports.py holds this).


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    if not gold:
        return 0.0
    return float(f1_score(gold, predicted, labels=list(labels), average="macro", zero_division=0))


def classification_metrics(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str],
                           latencies: Sequence[float] = ()) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(labels)
    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    lat = np.asarray(latencies, dtype=float)
    return {
        "n": len(gold),
        "macro_f1": macro_f1(gold, predicted, labels),
        "accuracy": float(accuracy_score(gold, predicted)) if gold else 0.0,
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, lab in enumerate(labels)},
        "labels": labels,
        "confusion_matrix": confusion_matrix(gold, predicted, labels=labels).tolist() if gold else [],
        "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
        "latency_p95_s": float(np.percentile(lat, 95)) if lat.size else None,
        "latency_mean_s": float(lat.mean()) if lat.size else None,
    }
