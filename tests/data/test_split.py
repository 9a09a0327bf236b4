"""Patient-grouped, class-stratified splitting."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from histowsss.data.split import grouped_stratified_split

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def synthetic_rows(n_patients: int = 20, seed: int = 0) -> tuple[list[str], list[str]]:
    """Patients with 2..6 images each; even patients mostly benign, odd ones mostly malignant."""
    rng = np.random.default_rng(seed)
    patients, labels = [], []
    for p in range(n_patients):
        main, other = ("malignant", "benign") if p % 2 else ("benign", "malignant")
        for _ in range(int(rng.integers(2, 7))):
            patients.append(f"P{p:02d}")
            labels.append(main if rng.random() < 0.85 else other)
    return patients, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_disjoint_and_stratified(seed):
    patients, labels = synthetic_rows(seed=seed)
    assign = grouped_stratified_split(patients, labels, FRACTIONS, seed=seed)
    assert set(assign) == set(patients)  # every patient once -> no patient in two splits
    assert set(assign.values()) == set(FRACTIONS)
    per_split = Counter(assign[p] for p in patients)
    per_split_class = Counter((assign[p], lab) for p, lab in zip(patients, labels))
    totals = Counter(labels)
    for s, f in FRACTIONS.items():
        assert abs(per_split[s] / len(patients) - f) <= 0.06, (s, per_split)
        for c, n in totals.items():
            assert abs(per_split_class[(s, c)] / n - f) <= 0.08, (s, c, per_split_class)


def test_deterministic_for_a_seed():
    patients, labels = synthetic_rows()
    assert grouped_stratified_split(patients, labels, FRACTIONS, seed=3) == \
        grouped_stratified_split(patients, labels, FRACTIONS, seed=3)


def test_every_split_gets_a_patient_when_possible():
    patients = ["a", "a", "a", "b", "c"]
    labels = ["x"] * 5
    assign = grouped_stratified_split(patients, labels, {"train": 0.8, "val": 0.1, "test": 0.1})
    assert sorted(assign.values()) == ["test", "train", "val"]


def test_two_way_split():
    patients, labels = synthetic_rows(10)
    assign = grouped_stratified_split(patients, labels, {"train": 0.5, "test": 0.5})
    assert set(assign.values()) == {"train", "test"}


def test_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        grouped_stratified_split(["a"], ["x"], {"train": 0.7, "test": 0.2})


def test_same_split_in_every_process():
    """The split must not depend on the interpreter's string hashing (PYTHONHASHSEED differs per process)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json; from histowsss.data.split import grouped_stratified_split as g; "
            "print(json.dumps(g(['P0', 'P1', 'P2', 'P3'], ['y', 'x', 'y', 'x'], "
            "{'train': 0.6, 'val': 0.2, 'test': 0.2}, seed=0), sort_keys=True))")
    outs = set()
    for hash_seed in ("1", "2", "3", "4", "5", "6"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1 and set(json.loads(outs.pop()).values()) == {"train", "val", "test"}


def test_every_class_gets_a_training_patient_with_cover():
    """A class of one image (on a patient with others) could be dealt to val or test, where it cannot be learnt."""
    from histowsss.data.split import grouped_stratified_split

    patients, labels = [], []
    for i in range(12):
        for _ in range(3):
            patients.append(f"p{i}")
            labels.append("normal" if i % 2 else "tumour")
    patients += ["p12", "p12"]
    labels += ["normal", "necrosis"]  # the one necrosis image, on a small patient dealt last
    classes = [{lab} for lab in labels]
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    without = [grouped_stratified_split(patients, labels, fractions, seed)["p12"] for seed in range(8)]
    assert any(s != "train" for s in without)  # (the deal alone leaves it out of train for some seeds)
    for seed in range(8):
        got = grouped_stratified_split(patients, labels, fractions, seed, row_classes=classes, cover="train")
        assert got["p12"] == "train" and set(got.values()) == {"train", "val", "test"}


def test_cover_empties_a_split_only_when_no_training_patient_can_be_spared():
    import random

    from histowsss.data.split import grouped_stratified_split

    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    for trial in range(300):
        rnd = random.Random(trial)
        patients, labels = [], []
        for i in range(rnd.randint(3, 6)):
            for _ in range(rnd.randint(1, 3)):
                patients.append(f"p{i}")
                labels.append(rnd.choice(["normal", "tumour"]))
        patients.append(rnd.choice(sorted(set(patients))))
        labels.append("necrosis")
        held: dict[str, set[str]] = {}
        for p, lab in zip(patients, labels):
            held.setdefault(p, set()).add(lab)
        got = grouped_stratified_split(patients, labels, fractions, 0, row_classes=[{x} for x in labels],
                                       cover="train")
        train = [p for p in held if got[p] == "train"]
        assert set(labels) <= set().union(*(held[p] for p in train))  # every class has a training patient
        if set(got.values()) != set(fractions):  # a split left empty: no training patient could be given up
            assert not any(all(any(c in held[q] for q in train if q != p) for c in held[p]) for p in train)
