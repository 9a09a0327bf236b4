"""Pair sampling for cross-image region mining: partners share the label set, from another patient if possible."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from histowsss.data.crops import CropExample


def label_key(target: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v > 0.5) for v in target)


def pair_examples(examples: list[CropExample], patients: list[str], rng: np.random.Generator) -> list[CropExample]:
    """Return [a1, p1, a2, p2, ...]: every example once as an anchor, followed by a partner with the same
    label set, drawn from another patient when one exists (else another image, else itself).

    ``patients[i]`` is the patient of image i. Partners never differ in class labels.
    """
    by_key: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for idx, ex in enumerate(examples):
        by_key[label_key(ex.target)].append(idx)
    out: list[CropExample] = []
    for idx in rng.permutation(len(examples)):
        ex = examples[idx]
        pool = by_key[label_key(ex.target)]
        other_patient = [j for j in _sample(pool, rng, 16) if patients[examples[j].image] != patients[ex.image]]
        other_image = [j for j in _sample(pool, rng, 16) if examples[j].image != ex.image]
        cands = other_patient or other_image or [int(idx)]
        out += [ex, examples[cands[0]]]
    return out


def _sample(pool: list[int], rng: np.random.Generator, n: int) -> list[int]:
    if len(pool) <= n:
        return list(rng.permutation(pool))
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
