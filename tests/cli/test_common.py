"""CLI helpers."""

from __future__ import annotations

from histowsss.cli import common


def test_progress_lines_keep_their_brackets(capsys, monkeypatch):
    """'[skip] step' is printed as written, not swallowed as a rich style tag."""
    from rich.console import Console

    monkeypatch.setattr(common, "console", Console(stderr=True, force_terminal=False, width=200))
    common.log_line("[skip] train_seg: finished with this configuration")
    common.log_line("[off ] train_seg_supervised: upper_bound is false")
    err = capsys.readouterr().err
    assert "[skip] train_seg: finished" in err and "[off ] train_seg_supervised" in err
