"""A run folder's relative config paths are read from the folder the run was started in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from histowsss.cli.app import app
from histowsss.config import load_config
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.run_dir import RunDir
from histowsss.engine.run_paths import INVOCATION, paths_base, recorded_working_folder, relative_paths, working_folder

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A project folder with data/manifest.csv and a run folder runs/x made from it with a relative manifest path;
    the current folder is the project's."""
    proj = tmp_path / "proj"
    generate_synthetic_dataset(proj / "data", {"train": 2, "test": 1}, size=48)
    monkeypatch.chdir(proj)
    cfg = load_config("demo", ["data.manifest=data/manifest.csv"])
    RunDir(Path("runs/x"), cfg).init()
    return proj, proj / "runs" / "x"


def test_the_run_records_where_it_started_and_keeps_the_path_as_written(project):
    proj, run = project
    assert recorded_working_folder(run) == proj
    cfg = load_config(run / "config.yaml")
    assert str(cfg.data.manifest) == "data/manifest.csv"  # as written: the step hashes survive a moved project
    assert relative_paths(cfg) == {"data.manifest": "data/manifest.csv"}
    assert paths_base(cfg, run) is None  # found from here


def test_paths_are_read_from_the_recorded_folder_only_when_missing_here_and_found_there(project, monkeypatch):
    proj, run = project
    cfg = load_config(run / "config.yaml")
    monkeypatch.chdir(run)
    assert paths_base(cfg, run) == proj
    (run / INVOCATION).unlink()  # a run made before the record: read from here, as before
    assert paths_base(cfg, run) is None
    (run / INVOCATION).write_text('{"working_folder": "%s"}' % (proj / "elsewhere"))  # not there either
    assert paths_base(cfg, run) is None


def test_a_copied_or_moved_project_reads_its_own_data_not_the_originals(project, monkeypatch, tmp_path):
    """A project copied whole (the original still there) or moved: a command started inside the run folder reads
    the manifest of the project it is in now, and says so; a run folder kept inside another project that holds the
    same relative paths does not read that project's (it was not started there)."""
    import json
    import shutil

    proj, run = project
    copy = Path(shutil.copytree(proj, tmp_path / "copy"))
    monkeypatch.chdir(copy / "runs" / "x")
    cfg = load_config("config.yaml")
    assert paths_base(cfg, Path(".")) == copy
    res = runner.invoke(app, ["run", "config.yaml", "--to", "eval_cam", "--dry-run"])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and f"read from {copy}, the project this run folder was moved or copied with (it " \
        f"was started in {proj})" in out, out
    moved = tmp_path / "moved"
    shutil.move(str(copy), moved)  # (the original still there too; a move without one reads the same way)
    monkeypatch.chdir(moved / "runs" / "x")
    assert paths_base(cfg, Path(".")) == moved
    other = Path(shutil.copytree(proj, tmp_path / "other"))  # a run folder of proj placed inside another project
    shutil.rmtree(other / "runs")
    monkeypatch.chdir(proj)
    RunDir(other / "runs" / "y", cfg).init()
    assert json.loads((other / "runs" / "y" / INVOCATION).read_text())["working_folder"] == str(proj)
    monkeypatch.chdir(other / "runs" / "y")
    assert paths_base(cfg, Path(".")) == proj  # where it was started, not the project around it


def test_report_and_a_dry_run_from_inside_the_run_folder_read_the_manifest(project, monkeypatch):
    proj, run = project
    monkeypatch.chdir(run)
    res = runner.invoke(app, ["report", "."])
    assert res.exit_code == 0, res.output
    assert f"read from {proj}" in res.output.replace("\n", "")  # (rich wraps lines)
    html = (run / "report.html").read_text()
    assert "manifest not readable" not in html and "train" in html
    assert "last command" in html and f"<td class=\"l\">{proj}</td>" in html  # the Run table names the invocation
    assert Path.cwd() == run  # the command came back
    res = runner.invoke(app, ["run", "config.yaml", "--run", ".", "--to", "eval_cam", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would run" in res.output and f"read from {proj}" in res.output.replace("\n", "")
    assert Path.cwd() == run


def test_without_the_record_the_report_says_where_it_looked(project, monkeypatch):
    _, run = project
    (run / INVOCATION).unlink()
    monkeypatch.chdir(run)
    res = runner.invoke(app, ["report", "."])
    assert res.exit_code == 0, res.output
    assert "a relative path is read from the current folder" in (run / "report.html").read_text()


def test_working_folder_comes_back_after_an_error(tmp_path: Path):
    here = os.getcwd()
    with pytest.raises(RuntimeError), working_folder(tmp_path):
        assert Path.cwd() == tmp_path.resolve()
        raise RuntimeError("boom")
    assert os.getcwd() == here


def test_run_folder_paths_makes_the_commands_paths_absolute_before_moving(project, monkeypatch):
    """predict / export / tune / report: their own path arguments keep meaning what they meant where they were typed."""
    from histowsss.engine.run_paths import run_folder_paths

    proj, run = project
    monkeypatch.chdir(run)
    lines: list[str] = []
    with run_folder_paths(Path("."), Path("out"), Path("a.png"), log=lines.append) as (r, out, *inputs):
        assert Path.cwd() == proj.resolve()
        assert r == run and out == run / "out" and inputs == [run / "a.png"]
    assert Path.cwd() == run and len(lines) == 1
    monkeypatch.chdir(proj)  # found from here: nothing moves, nothing is rewritten
    with run_folder_paths(run, Path("out"), log=lines.append) as (r, out):
        assert out == Path("out") and Path.cwd() == proj
    assert len(lines) == 1


def test_a_run_folders_config_runs_in_that_folder_without_run(project, monkeypatch, tmp_path):
    """`histowsss run RUN/config.yaml` continues RUN (not a new ./runs/<name>), from inside it or from elsewhere; so
    does one of the configs it ran with (RUN/config_history/<sha>.yaml: going back to earlier settings)."""
    proj, run = project
    history = next((run / "config_history").glob("*.yaml"))
    for where, arg in ((run, "config.yaml"), (tmp_path, str(run / "config.yaml")), (tmp_path, str(history)),
                       (run, f"config_history/{history.name}")):
        monkeypatch.chdir(where)
        res = runner.invoke(app, ["run", arg, "--to", "eval_cam", "--dry-run"])
        out = " ".join(res.output.split())
        assert res.exit_code == 0, res.output
        assert f"run folder: {run}" in out or "run folder: ." in out, out
        assert not (where / "runs").exists()


def test_a_run_started_where_its_data_is_not_keeps_where_it_was_read_from(project, tmp_path, monkeypatch):
    """`histowsss run` started from another folder, its data gone from both (its steps having nothing to do): it
    says so, and invocation.json still names the project, so that the run works again once the data is back."""
    proj, run = project
    from histowsss.steps import train_cam

    cfg = load_config(str(run / "config.yaml"))
    with RunDir(run, cfg).step("train_cam", train_cam.config_hash(cfg)):
        pass  # (finished: nothing to do)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(str(run / "config.yaml"))
    with pytest.warns(UserWarning, match=r"data.manifest \(data/manifest.csv\): not found from .*elsewhere.* keeps "
                                         r"the folder relative paths were read from"):
        RunDir(run, cfg).init()
    assert recorded_working_folder(run) == proj
    logs: list[str] = []
    from histowsss.engine.pipeline import run_pipeline

    run_pipeline(cfg, RunDir(run, cfg), stop="train_cam", log=logs.append, dry_run=True)
    assert any("data/manifest.csv: the manifest (data.manifest) is not found from" in line for line in logs)


def test_a_project_moved_on_purpose_with_one_path_broken_is_recorded_where_it_is(project, tmp_path, monkeypatch):
    """The old place gone, the data here but points.file misspelt: invocation.json names the new place (the
    folder that finds the most of the paths), and the step that reads the broken path says so."""
    import shutil

    proj, run = project
    moved = tmp_path / "moved"
    shutil.move(str(proj), str(moved))
    monkeypatch.chdir(moved)
    cfg = load_config(str(moved / "runs" / "x" / "config.yaml"), ["points.file=clicks_typo.csv"])
    RunDir(moved / "runs" / "x", cfg).init()
    assert recorded_working_folder(moved / "runs" / "x") == moved
