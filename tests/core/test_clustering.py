"""Clustering of micro-rule embeddings: DBSCAN, degenerate results detected, fallbacks, nothing dropped."""

from __future__ import annotations

import numpy as np

from pld_desktop.core.clustering import cluster_rules, degenerate


def blobs(n_per: int, centres: int, spread: float, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    pts = np.concatenate([c[i] + spread * rng.normal(size=(n_per, dim)) for i in range(centres)])
    return (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)


def test_well_separated_rules_form_their_clusters() -> None:
    result = cluster_rules(blobs(20, 4, 0.05), eps=0.4, min_samples=6)
    assert result.n_clusters == 4
    assert result.degenerate_reason == ""
    assert result.method.startswith("dbscan(eps=0.4")


def test_everything_chained_into_one_cluster_is_detected_and_replaced() -> None:
    x = blobs(25, 4, 0.05)
    result = cluster_rules(x, eps=1.5, min_samples=6)  # eps so large every rule joins one cluster
    assert "only 1 cluster" in result.degenerate_reason
    assert result.n_clusters >= 2
    assert len(result.tried) > 1


def test_all_noise_is_detected_and_replaced() -> None:
    x = blobs(5, 12, 0.3, seed=3)
    result = cluster_rules(x, eps=0.01, min_samples=6)
    assert result.degenerate_reason
    assert result.n_clusters >= 1
    assert result.noise_fraction <= 0.6


def test_agglomerative_fallback_assigns_every_rule() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 64)).astype(np.float32)  # no structure at all
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    result = cluster_rules(x, eps=0.4, min_samples=6)
    assert len(result.labels) == 40
    if "agglomerative" in result.method:
        assert (result.labels >= 0).all()


def test_tiny_inputs() -> None:
    assert cluster_rules(np.zeros((0, 4), dtype=np.float32)).n_clusters == 0
    one = np.ones((1, 4), dtype=np.float32) / 2
    assert list(cluster_rules(one).labels) == [0]
    assert degenerate(np.array([-1, -1, -1]), 3) == "every rule was noise"
