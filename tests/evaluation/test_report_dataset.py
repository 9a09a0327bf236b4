"""The report's dataset table when classes come from masks (no image-label column, as in glas-gland)."""

from __future__ import annotations

import re
from pathlib import Path


from histowsss.config import load_config
from histowsss.data.manifest import read_manifest
from histowsss.data.masks import load_class_mask
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.evaluation.report import section_dataset


def test_class_counts_come_from_the_masks_without_a_label_column(tmp_path: Path):
    man = generate_synthetic_dataset(tmp_path / "syn", {"train": 4, "test": 2}, size=48)
    cfg = load_config("demo", [f"data.manifest={man}", "data.label_column=null", "data.mask_mode=binary",
                               "data.mask_foreground_class=malignant", "data.val_splits=[]",
                               "data.patches={size: 32, stride: 16, label_rule: mask_fraction, min_fraction: 0.05}"])
    samples = read_manifest(cfg.data)
    want = sum(float((load_class_mask(s, cfg.data) == 1).mean()) > 0.05 for s in samples)
    html = section_dataset(cfg)
    assert "some 32-px patch of it holds more than 5 % of it" in html
    # the 'all' row: images, patients, then per class (benign, malignant) images and patients
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html.split("<td class=\"l\">all</td>")[1])
    assert int(cells[4]) == want > 0 and int(cells[2]) == len(samples)  # malignant images / benign images


def test_timings_add_up_a_resumed_steps_sessions(tmp_path):
    """A step taken up again shows its time over all sessions, a lower bound when one was killed hard."""
    import json

    from histowsss.evaluation.report import section_timings

    (tmp_path / "status").mkdir()
    recs = {"train_cam": {"state": "done", "wall_s": 100.0},
            "train_irn": {"state": "done", "wall_s": 229.5, "sessions": 3, "wall_s_incomplete": True},
            "make_cam": {"state": "done", "wall_s": 10.0, "sessions": 2}}
    for k, v in recs.items():
        (tmp_path / "status" / f"{k}.json").write_text(json.dumps(v))
    html = section_timings(tmp_path)
    assert "≥ 229.5 (3 sessions)" in html and "10.0 (2 sessions)" in html and "≥ 339.5" in html
