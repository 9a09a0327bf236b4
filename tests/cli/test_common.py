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


def test_known_errors_are_one_line_naming_the_file(capsys, monkeypatch, tmp_path):
    """Unwritable outputs name the file asked for (not the temporary one); a missing optional extra says how to get
    it; neither prints a traceback."""
    import pytest
    import typer
    from rich.console import Console

    from histowsss.engine.atomic import write_text
    from histowsss.ops.crf import CrfUnavailable

    monkeypatch.setattr(common, "console", Console(stderr=True, force_terminal=False, width=400))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(typer.Exit) as e:
        with common.clear_errors():
            write_text(blocker / "out.csv", "a")  # its folder is a file
    err = " ".join(capsys.readouterr().err.split())
    assert e.value.exit_code == 2 and f"cannot write {blocker / 'out.csv'}" in err and ".partial" not in err
    with pytest.raises(typer.Exit):
        with common.clear_errors():
            raise CrfUnavailable("the dense CRF needs the optional package pydensecrf2")
    assert "CrfUnavailable: the dense CRF needs the optional package pydensecrf2" in capsys.readouterr().err


def test_plain_warnings_print_one_line_once_per_text(capsys):
    import warnings

    from histowsss.cli.common import plain_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        plain_warnings()
        for _ in range(2):  # the same text from two places (two steps read one RGBA image): said once
            warnings.warn("a.png: RGBA image with transparency; composited on white", UserWarning)
        warnings.warn("soon gone", FutureWarning)
    err = capsys.readouterr().err
    assert err.count("warning: a.png: RGBA image with transparency; composited on white") == 1
    assert "warning: FutureWarning: soon gone" in err and "warnings.warn(" not in err
