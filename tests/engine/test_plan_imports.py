"""Planning a run, a dry run and a report read the step modules without loading torch or timm (their import is
seconds of a command that otherwise takes one); the steps load them when they run."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_planning_and_standing_load_no_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from histowsss.config import load_config
        from histowsss.engine.run_dir import RunDir
        from histowsss.engine.standing import steps_standing
        from histowsss.engine.step_plan import step_plan
        from histowsss.evaluation import report  # noqa: F401
        from histowsss.cli import app  # noqa: F401

        cfg = load_config("demo")
        plan = step_plan(cfg)
        for name, mod, h, key, off in plan:
            for fn in ("requires", "requires_any", "prefers", "disabled"):
                getattr(mod, fn, lambda c: None)(cfg)
        steps_standing(cfg, RunDir({str(tmp_path / "run")!r}, cfg))
        heavy = sorted(m for m in ("torch", "timm", "torchvision", "segmentation_models_pytorch") if m in sys.modules)
        assert not heavy, heavy
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
