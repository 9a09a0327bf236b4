"""Pair sampling for cross-image region mining: partners share the label set, from another patient if possible."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from histowsss.data.crops import CropExample


def label_key(target: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v > 0.5) for v in target)


def pair_examples(examples: list[CropExample], patients: list[str], rng: np.random.Generator) -> list[CropExample]:
    """Return [a1, p1, a2, p2, ...]: every example once as an anchor, followed by a partner with the same
    label set, drawn uniformly from the examples of the other patients when one exists, else of the patient's
    other images, else the anchor itself.

    ``patients[i]`` is the patient of image i. Partners never differ in class labels.
    """
    by_key: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for idx, ex in enumerate(examples):
        by_key[label_key(ex.target)].append(idx)
    pools = {k: (_Segments(pool, [patients[examples[j].image] for j in pool]),
                 _Segments(pool, [examples[j].image for j in pool])) for k, pool in by_key.items()}
    out: list[CropExample] = []
    for idx in rng.permutation(len(examples)):
        ex = examples[idx]
        by_patient, by_image = pools[label_key(ex.target)]
        j = by_patient.draw_outside(patients[ex.image], rng)
        if j is None:
            j = by_image.draw_outside(ex.image, rng)
        out += [ex, examples[int(idx) if j is None else j]]
    return out


class _Segments:
    """A pool of example indices sorted by a group (patient, image): one uniform draw among the examples outside
    a given group in constant time."""

    def __init__(self, pool: list[int], groups: list):
        order = sorted(range(len(pool)), key=lambda i: str(groups[i]))
        self.items = [pool[i] for i in order]
        self.bounds: dict = {}
        for pos, i in enumerate(order):
            g = groups[i]
            lo, _ = self.bounds.get(g, (pos, pos))
            self.bounds[g] = (lo, pos + 1)

    def draw_outside(self, group, rng: np.random.Generator) -> int | None:
        lo, hi = self.bounds.get(group, (0, 0))
        n = len(self.items) - (hi - lo)
        if n <= 0:
            return None
        r = int(rng.integers(n))
        return self.items[r + (hi - lo) if r >= lo else r]
