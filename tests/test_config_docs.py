"""docs/config.md's key table is generated from the config models and must match them."""

from __future__ import annotations

from pathlib import Path

from histowsss.config import RunConfig
from histowsss.config_docs import TABLE_HEADER, key_table, update

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _keys(model, prefix=""):
    from histowsss.config_docs import _rows

    return [r.split("`")[1] for r in _rows(model, prefix)]


def test_every_key_is_in_the_table_once():
    table = key_table()
    keys = _keys(RunConfig)
    assert len(keys) == len(set(keys)) > 50
    for k in ("train_seg.labels", "train_seg.label_dir", "data.patches.size", "eval_seg.tta"):
        assert f"| `{k}` |" in table


def test_docs_config_md_is_current():
    """Fails when a config key changed without `python -m histowsss.config_docs` being run."""
    text = DOC.read_text()
    assert TABLE_HEADER in text
    assert text[text.index(TABLE_HEADER):] == key_table(), "run `python -m histowsss.config_docs` to refresh docs/config.md"


def test_update_rewrites_only_the_table(tmp_path):
    p = tmp_path / "config.md"
    p.write_text("# intro\n\ntext\n\n" + TABLE_HEADER + "| `old` | int | 1 |  |\n")
    assert update(p) is True
    assert p.read_text().startswith("# intro\n\ntext\n\n") and p.read_text().endswith(key_table())
    assert update(p) is False
