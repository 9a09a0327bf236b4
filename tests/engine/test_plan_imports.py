"""Planning a run, a dry run and a report read the step modules without loading torch or timm (their import is
seconds of a command that otherwise takes one); the steps load them when they run."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_planning_and_standing_load_no_torch(tmp_path, demo_data):
    """With a finished record of every step (so that every decision is taken: inputs, handoffs, label choice,
    legacy hashes), the stale marks, a dry run with nothing to do and the report load neither."""
    code = textwrap.dedent(f"""
        import sys
        from histowsss.config import load_config
        from histowsss.engine.pipeline import run_pipeline
        from histowsss.engine.run_dir import RunDir
        from histowsss.engine.standing import steps_standing
        from histowsss.engine.step_plan import step_plan
        from histowsss.evaluation.report import build_report
        from histowsss.cli import app  # noqa: F401

        cfg = load_config("demo", ["data.manifest={demo_data}", "upper_bound=true", "train_seg.labels=pseudo"])
        run = RunDir({str(tmp_path / "run")!r}, cfg).init()
        for name, mod, h, key, off in step_plan(cfg):
            if not off:
                with run.step(key, h):
                    pass
        standing = steps_standing(cfg, run)
        logs = []
        run_pipeline(cfg, run, log=logs.append, dry_run=True)
        build_report(run.path)
        heavy = sorted(m for m in ("torch", "timm", "torchvision", "segmentation_models_pytorch") if m in sys.modules)
        assert not heavy, (heavy, standing, logs)
        assert any(line.startswith("[skip]") for line in logs), logs
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
