"""Train/dev/test assignment: stratified by label, grouped rows kept together, or the file's own split."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from pld_desktop.core.dataset.problems import (
    Problem,
    quoted_list,
)
from pld_desktop.core.dataset.records import (
    SPLITS,
    SplitSettings,
)

# Requested and achieved split proportions further apart than this (absolute) produce a warning.
_PROPORTION_TOLERANCE = 0.05


# --------------------------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------------------------


def _normalised_ratios(split: SplitSettings) -> np.ndarray:
    ratios = np.array([max(0.0, r) for r in split.ratios()], dtype=float)
    total = ratios.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("split ratios must have a positive sum")
    return np.asarray(ratios / total)


def _integerise(desired: np.ndarray, n: int, nonzero: np.ndarray) -> np.ndarray:
    """Whole row counts summing to n, close to `desired`, with >= 1 in every nonzero split when n allows."""
    counts = np.where(nonzero, np.floor(np.clip(desired, 0, None)), 0).astype(int)
    k = int(nonzero.sum())
    if n >= k:
        counts = np.where(nonzero, np.maximum(counts, 1), 0)
        floor = np.where(nonzero, 1, 0)
    else:  # too few rows for every split: fill in priority order train, dev, test
        counts = np.zeros(3, dtype=int)
        for i in np.flatnonzero(nonzero)[:n]:
            counts[i] = 1
        return counts
    while counts.sum() > n:
        excess = np.where(counts > floor, counts - desired, -np.inf)
        counts[int(np.argmax(excess))] -= 1
    while counts.sum() < n:
        deficit = np.where(nonzero, desired - counts, -np.inf)
        counts[int(np.argmax(deficit))] += 1
    return counts


def _assign_rows(label_codes: np.ndarray, n_labels: int, ratios: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split codes (0/1/2) for rows, stratified by label; rounding is carried across labels to keep totals close."""
    out = np.zeros(len(label_codes), dtype=np.int8)
    order = np.argsort(label_codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(label_codes, minlength=n_labels))])
    nonzero = ratios > 0
    cum_target = np.zeros(3)
    cum_assigned = np.zeros(3)
    for k in range(n_labels):
        members = order[bounds[k]: bounds[k + 1]]
        n = len(members)
        if n == 0:
            continue
        cum_target += n * ratios
        counts = _integerise(cum_target - cum_assigned, n, nonzero)
        cum_assigned += counts
        shuffled = rng.permutation(members)
        out[shuffled[counts[0]: counts[0] + counts[1]]] = 1
        out[shuffled[counts[0] + counts[1]:]] = 2
    return out


def _assign_groups(labels: np.ndarray, groups: Sequence[str | None], ratios: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Split codes for rows, assigning whole groups; groups are stratified by their majority label."""
    n = len(labels)
    keys = np.array(
        [f"\x00row{i}" if g is None or str(g).strip() == "" else "\x01" + str(g).strip()
         for i, g in enumerate(groups)], dtype=object)
    frame = pd.DataFrame({"g": keys, "l": labels})
    pair_counts = frame.groupby(["g", "l"], sort=True).size().reset_index(name="n")
    pair_counts = pair_counts.sort_values(["g", "n", "l"], ascending=[True, False, True], kind="stable")
    majority = pair_counts.drop_duplicates("g").set_index("g")["l"]
    sizes = frame.groupby("g", sort=True).size()
    table = pd.DataFrame({"label": majority, "size": sizes}).sort_index()  # sorted group keys: row-order independent
    nonzero = ratios > 0
    split_of: dict[str, int] = {}
    assigned = np.zeros(3)
    rows_done = 0
    for _, stratum in table.groupby("label", sort=True):
        group_keys = stratum.index.to_numpy()
        group_sizes = stratum["size"].to_numpy()
        perm = rng.permutation(len(group_keys))
        perm = perm[np.argsort(-group_sizes[perm], kind="stable")]  # largest first, random among equal sizes
        total = int(group_sizes.sum())
        target = ratios * (rows_done + total) - assigned
        local = np.zeros(3)
        local_groups = np.zeros(3, dtype=int)
        remaining = len(perm)
        for j in perm:
            empty = [i for i in range(3) if nonzero[i] and local_groups[i] == 0]
            candidates = empty if remaining <= len(empty) else [i for i in range(3) if nonzero[i]]
            choice = max(candidates, key=lambda i: (target[i] - local[i], -i))
            split_of[group_keys[j]] = choice
            local[choice] += group_sizes[j]
            local_groups[choice] += 1
            remaining -= 1
        assigned += local
        rows_done += total
    return pd.Series(keys).map(split_of).to_numpy(dtype=np.int8) if n else np.zeros(0, dtype=np.int8)


def assign_splits(labels: Sequence[str], groups: Sequence[str | None] | None, split: SplitSettings) -> list[str]:
    """Assign "train"/"dev"/"test" to each row: stratified by label, reproducible for a given seed and input.

    Every label gets at least one row in each split with a nonzero ratio when it has enough rows. With groups,
    all rows of a group land in the same split (groups stratified by their majority label; rows whose group is
    None or empty count as groups of their own), so proportions can drift from the requested ones.
    """
    labels_array = np.asarray([str(label) for label in labels], dtype=object)
    if groups is not None and len(groups) != len(labels_array):
        raise ValueError(f"groups has {len(groups)} entries but labels has {len(labels_array)}")
    if len(labels_array) == 0:
        return []
    ratios = _normalised_ratios(split)
    rng = np.random.default_rng(int(split.seed))
    use_groups = groups is not None and any(g is not None and str(g).strip() != "" for g in groups)
    if use_groups:
        assert groups is not None
        codes = _assign_groups(labels_array, groups, ratios, rng)
    else:
        uniques, label_codes = np.unique(labels_array.astype(str), return_inverse=True)
        codes = _assign_rows(label_codes.ravel(), len(uniques), ratios, rng)
    names = np.array(SPLITS, dtype=object)
    return [str(name) for name in names[codes]]


def _split_proportions(codes: Sequence[str]) -> np.ndarray:
    counts = np.array([sum(1 for c in codes if c == s) for s in SPLITS], dtype=float)
    return np.asarray(counts / max(1.0, counts.sum()))


def _percentages(values: Iterable[float]) -> str:
    return " / ".join(f"{round(100 * v)}%" for v in values)



def _missing_in_splits(splits: Sequence[str], labels: Sequence[str], all_labels: list[str],
                       wanted: Sequence[str]) -> list[tuple[str, str]]:
    present = set(zip(labels, splits))
    return [(label, s) for label in all_labels for s in wanted if (label, s) not in present]


def group_split_warnings(splits: list[str], labels: list[str], all_labels: list[str],
                          split: SplitSettings) -> list[Problem]:
    warnings: list[Problem] = []
    requested = np.array(split.ratios()) / sum(split.ratios())
    achieved = _split_proportions(splits)
    if np.max(np.abs(achieved - requested)) > _PROPORTION_TOLERANCE:
        warnings.append(Problem(
            f"Because rows of the same group stay together, the split is {_percentages(achieved)} "
            f"(train / dev / test) instead of the requested {_percentages(requested)}.", severity="warning"))
    for label, s in _missing_in_splits(splits, labels, all_labels, SPLITS):
        warnings.append(Problem(
            f"Because rows of the same group stay together, the label '{label}' has no rows in the {s} split.",
            severity="warning"))
    return warnings


def source_splits(source: list[str], labels: list[str], groups: list[str | None] | None, all_labels: list[str],
                   split: SplitSettings) -> tuple[list[str], list[Problem], list[Problem]]:
    """Use the file's own split; carve a missing dev (or test) split out of train with the requested ratios.

    Returns (splits, errors, warnings).
    """
    warnings: list[Problem] = []
    splits = list(source)
    present = set(splits)
    if "train" not in present:
        return [], [Problem(
            "The split column has no training rows (train). Add some, or turn off 'keep the file's own split'.")], []
    missing = [s for s in ("dev", "test") if s not in present]
    if missing:
        ratios = dict(zip(SPLITS, split.ratios()))
        carve = SplitSettings(train=ratios["train"], dev=ratios["dev"] if "dev" in missing else 0.0,
                              test=ratios["test"] if "test" in missing else 0.0, seed=split.seed)
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        sub = assign_splits([labels[i] for i in train_idx],
                            [groups[i] for i in train_idx] if groups is not None else None, carve)
        for i, s in zip(train_idx, sub):
            splits[i] = s
        moved = {s: sub.count(s) for s in missing}
        warnings.append(Problem(
            f"The file's split column has no {' or '.join(missing)} rows, so "
            + " and ".join(f"{moved[s]:,} training rows were moved to {s}" for s in missing)
            + " (stratified by label).", severity="warning"))
    for label, s in _missing_in_splits(splits, labels, all_labels, SPLITS):
        warnings.append(Problem(f"The label '{label}' has no rows in the {s} split.", severity="warning"))
    if groups is not None:
        straddling: dict[str, set[str]] = {}
        for g, s in zip(groups, splits):
            if g is not None:
                straddling.setdefault(g, set()).add(s)
        bad = [g for g, ss in straddling.items() if len(ss) > 1]
        if bad:
            warnings.append(Problem(
                f"{len(bad)} group{'s' if len(bad) != 1 else ''} ({quoted_list(bad, limit=5)}) "
                f"{'have' if len(bad) != 1 else 'has'} rows in more than one split of the file's own split.",
                severity="warning"))
    return splits, [], warnings


