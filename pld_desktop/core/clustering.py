"""Clustering of micro-rule embeddings: DBSCAN on cosine distance, with degenerate-result detection and fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# scikit-learn is imported where it clusters (~2 s to import): every `pld` command and the window import the
# pipeline, and most of them never cluster anything.


@dataclass
class ClusterResult:
    labels: np.ndarray          # cluster index per point, -1 = noise
    method: str                 # e.g. "dbscan(eps=0.4,min_samples=6)"
    degenerate_reason: str = ""  # why the first attempt was rejected ('' if it was fine)
    tried: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_clusters(self) -> int:
        return len({int(x) for x in self.labels if x >= 0})

    @property
    def noise_fraction(self) -> float:
        return float(np.mean(self.labels < 0)) if len(self.labels) else 0.0


def _dbscan(vectors: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return np.asarray(DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit(vectors).labels_)


def sane_cluster_range(n: int) -> tuple[int, int]:
    """How many clusters a readable prompt can hold for n rules: about sqrt(n), at least 1, at most 30."""
    if n < 2:
        return 1, 1
    hi = max(2, min(30, round(np.sqrt(n) * 1.5)))
    return 1 if n < 12 else 2, hi


def degenerate(labels: np.ndarray, n: int) -> str:
    """'' when the result is usable, else a sentence saying what is wrong with it."""
    n_clusters = len({int(x) for x in labels if x >= 0})
    noise = float(np.mean(labels < 0)) if n else 0.0
    lo, hi = sane_cluster_range(n)
    if n_clusters == 0:
        return "every rule was noise"
    if noise > 0.6:
        return f"{noise:.0%} of the rules were noise"
    if n_clusters < lo:
        return f"only {n_clusters} cluster for {n} rules (everything chained together)"
    if n_clusters > hi:
        return f"{n_clusters} clusters for {n} rules (fragmented)"
    return ""


def cluster_rules(vectors: np.ndarray, eps: float = 0.4, min_samples: int = 6) -> ClusterResult:
    """DBSCAN with the user's settings; if degenerate, sweep eps, then fall back to agglomerative clustering.

    `vectors` must be unit-normalised. Small groups (fewer than min_samples rules) are clustered with a
    proportionally smaller min_samples, since a label with 8 rules can never form a 6-point core otherwise.
    """
    n = len(vectors)
    if n == 0:
        return ClusterResult(np.zeros(0, dtype=int), "empty")
    if n == 1:
        return ClusterResult(np.zeros(1, dtype=int), "single rule")
    ms = max(2, min(min_samples, n // 3 or 1))
    labels = _dbscan(vectors, eps, ms)
    tried = [{"method": "dbscan", "eps": eps, "min_samples": ms, "clusters": _count(labels),
              "noise": float(np.mean(labels < 0))}]
    reason = degenerate(labels, n)
    if not reason:
        return ClusterResult(labels, f"dbscan(eps={eps},min_samples={ms})", "", tried)
    # Eps sweep: pick the eps whose result is sane with the least noise.
    best: tuple[float, float, np.ndarray] | None = None
    for e in np.round(np.arange(0.10, 0.71, 0.05), 2):
        cand = _dbscan(vectors, float(e), ms)
        tried.append({"method": "dbscan", "eps": float(e), "min_samples": ms, "clusters": _count(cand),
                      "noise": float(np.mean(cand < 0))})
        if not degenerate(cand, n):
            noise = float(np.mean(cand < 0))
            if best is None or noise < best[1]:
                best = (float(e), noise, cand)
    if best is not None:
        return ClusterResult(best[2], f"dbscan(eps={best[0]},min_samples={ms}) after eps sweep", reason, tried)
    # Agglomerative fallback: every rule gets a cluster; merge tiny clusters' rules as noise-free singletons.
    lo, hi = sane_cluster_range(n)
    target = max(lo, min(hi, round(np.sqrt(n))))
    from sklearn.cluster import AgglomerativeClustering

    agg = AgglomerativeClustering(n_clusters=target, metric="cosine", linkage="average").fit(vectors)
    labels = agg.labels_.astype(int)
    tried.append({"method": "agglomerative", "n_clusters": target, "clusters": _count(labels), "noise": 0.0})
    return ClusterResult(labels, f"agglomerative(average, cosine, k={target}) fallback", reason, tried)


# When DBSCAN sets aside more than this share of a label's micro-rules as noise, they are grouped by the
# agglomerative fallback and merged too: a large noise share is lost knowledge, not outliers.
NOISE_REGROUP_SHARE = 0.25


def keep_every_label(vectors: np.ndarray, labels: np.ndarray, degenerate_reason: str = "") -> tuple[np.ndarray, str]:
    """Final clusters of one label's micro-rules: large or degenerate noise is regrouped, not dropped, and a
    single-member cluster stays a rule only when the label has nothing else. Returns (labels, note)."""
    out = np.asarray(labels, dtype=int).copy()
    n = len(out)
    notes = []
    noise = np.flatnonzero(out < 0)
    if len(noise) and (len(noise) > NOISE_REGROUP_SHARE * n or degenerate_reason or len(noise) == n):
        base = int(out.max()) + 1 if (out >= 0).any() else 0
        if len(noise) >= 4:
            k = max(1, min(len(noise) // 2, round(np.sqrt(len(noise)))))
            from sklearn.cluster import AgglomerativeClustering

            sub = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit(vectors[noise]).labels_
        else:
            sub = np.zeros(len(noise), dtype=int)
        out[noise] = base + sub.astype(int)
        notes.append(f"{len(noise)} of {n} rules were noise; regrouped (agglomerative) and merged, not dropped")
    sizes = {int(c): int((out == c).sum()) for c in set(out.tolist()) if c >= 0}
    singles = [c for c, size in sizes.items() if size == 1]
    if singles and len(singles) < len(sizes):
        # The label has real clusters: a lone rule is no rule of its own; it joins the nearest larger cluster,
        # whose merge keeps its condition (dropping it would lose knowledge the way noise did).
        big = [c for c in sizes if c not in singles]
        cents = np.stack([vectors[out == c].mean(axis=0) for c in big])
        cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
        for c in singles:
            i = int(np.flatnonzero(out == c)[0])
            out[i] = big[int(np.argmax(cents @ vectors[i]))]
        notes.append(f"{len(singles)} single-rule cluster(s) joined their nearest larger cluster")
    elif singles and len(singles) > 1:
        target = min(singles)
        for c in singles:  # nothing but lone rules: one cluster, merged into one rule
            out[out == c] = target
        notes.append(f"{len(singles)} single-rule clusters joined into one (no larger cluster for the label)")
    return out, "; ".join(notes)


def _count(labels: np.ndarray) -> int:
    return len({int(x) for x in labels if x >= 0})


def centroid_order(vectors: np.ndarray) -> np.ndarray:
    """Indices of `vectors` sorted from closest to farthest from their normalised centroid."""
    c = vectors.mean(axis=0)
    norm = np.linalg.norm(c)
    if norm > 0:
        c = c / norm
    return np.argsort(-(vectors @ c), kind="stable")


def map_2d(vectors: np.ndarray) -> np.ndarray:
    """A 2-D projection (PCA) of the embeddings for the cluster map view."""
    if len(vectors) == 0:
        return np.zeros((0, 2))
    centred = vectors - vectors.mean(axis=0)
    if len(vectors) < 3:
        return np.pad(centred[:, :2], ((0, 0), (0, max(0, 2 - centred.shape[1]))))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    # SVD fixes each axis only up to sign; pin it so the same rules always draw the same map.
    axes = vt[:2] * np.sign(vt[:2][np.arange(len(vt[:2])), np.abs(vt[:2]).argmax(axis=1)])[:, None]
    return np.asarray(centred @ axes.T)
