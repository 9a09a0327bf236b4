"""Patient-grouped, class-stratified splits."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np


def grouped_stratified_split(patients: list[str], labels: list[str], fractions: dict[str, float],
                             seed: int = 0, row_classes: list[set[str]] | None = None,
                             cover: str | None = None) -> dict[str, str]:
    """Assign every patient to a split so that no patient is in two splits and class proportions match.

    ``labels`` holds one label key per row (for multi-label rows, the joined label set). Patients are
    shuffled, ordered by their number of images (largest first; ties stay shuffled), and dealt greedily to the
    split whose per-class deficit (target count - current count) is largest. With ``cover`` (a split of
    ``fractions``, the training one) and ``row_classes`` (each row's classes), every class ends with a patient in
    ``cover``: where the deal left a class out of it (a rare class, one or two images), the patient holding it with
    the fewest images moves there, since a class no training image carries cannot be learnt. Returns patient ->
    split.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    per_patient: dict[str, Counter] = defaultdict(Counter)
    for p, lab in zip(patients, labels):
        per_patient[p][lab] += 1
    totals = Counter(labels)
    target = {s: {c: f * n for c, n in totals.items()} for s, f in fractions.items()}
    current = {s: Counter() for s in fractions}
    order = list(per_patient)
    rng.shuffle(order)
    order.sort(key=lambda p: -sum(per_patient[p].values()))  # big patients first, ties shuffled
    assignment: dict[str, str] = {}
    for p in order:
        counts = per_patient[p]

        def gain(s: str) -> float:
            return sum(min(counts[c], max(target[s][c] - current[s][c], 0.0)) for c in counts) + 1e-3 * fractions[s]

        best = max(fractions, key=gain)
        assignment[p] = best
        current[best].update(counts)
    # guarantee every split with a positive fraction has at least one patient when possible
    for s, f in fractions.items():
        if f > 0 and s not in assignment.values() and len(per_patient) >= len(fractions):
            held = Counter(assignment.values())
            # the split with the most patients gives one (ties: the larger fraction, then the order given; never a
            # set's order, which changes with the interpreter's string hashing from one process to the next)
            donor = max(fractions, key=lambda d: (held[d], fractions[d]))
            moved = next(p for p in reversed(order) if assignment[p] == donor)
            assignment[moved] = s
    if cover in fractions and row_classes is not None:
        held: dict[str, set[str]] = defaultdict(set)
        for p, classes in zip(patients, row_classes):
            held[p] |= set(classes)
        for c in sorted(set().union(*held.values())):
            if any(assignment[p] == cover and c in held[p] for p in order):
                continue
            moved = min((p for p in order if c in held[p]), key=lambda p: sum(per_patient[p].values()))
            assignment[moved] = cover
        # a split the moves emptied gets back a training patient whose classes other training patients hold too
        for s in fractions:
            if fractions[s] > 0 and s != cover and s not in assignment.values():
                in_cover = [p for p in order if assignment[p] == cover]

                def spare(p: str) -> bool:
                    return all(any(c in held[q] for q in in_cover if q != p) for c in held[p])

                spares = [p for p in in_cover if spare(p)]
                if spares:
                    assignment[min(spares, key=lambda p: sum(per_patient[p].values()))] = s
    return assignment


def strata_with_masks(labels: list[str], masked: list[bool]) -> list[str]:
    """Split keys that also balance the images with masks: when only some rows have a mask (masks drawn for a
    subset), each label key is split into its masked and unmasked rows, so that every split gets its share of
    masked images (thresholds are chosen on masked training images, and test quality is measured on masked test
    images). Unchanged when every row or none has a mask."""
    if all(masked) or not any(masked):
        return list(labels)
    return [f"{lab} +mask" if m else lab for lab, m in zip(labels, masked)]
