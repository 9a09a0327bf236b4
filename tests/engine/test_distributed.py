"""DDP: sharding, and train_seg in 2 CPU processes (gloo) ending with identical weights on both ranks."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from histowsss.engine.distributed import DistContext, env_world, init_distributed


def test_shard_pads_so_every_rank_gets_the_same_count():
    items = list(range(7))
    shards = [DistContext(rank=r, world_size=3).shard(items) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert {x for s in shards for x in s} == set(items)  # every item is somewhere (2 repeated)
    assert shards[0] == [0, 3, 6] and shards[2] == [2, 5, 1]
    assert DistContext().shard(items) == items


def test_single_process_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(RuntimeError, match="torchrun"):
        env_world()


def _worker(rank: int, port: int, manifest: str, run_path: str, out: str, fast: list[str]) -> None:
    """One DDP rank, set up as torchrun would (environment variables), in a forked process."""
    import traceback

    try:
        import torch
        from safetensors.torch import save_file

        from histowsss.config import load_config
        from histowsss.engine.run_dir import RunDir
        from histowsss.steps import train_seg

        os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"})
        torch.set_num_threads(1)  # no OpenMP pool after fork
        cfg = load_config("demo", [f"data.manifest={manifest}", "device=cpu", *fast])
        run = RunDir(run_path, cfg)
        ctx = init_distributed(cfg.device)
        h = train_seg.config_hash(cfg)
        with train_seg.rank_step(run, ctx, "train_seg", h, False) as info:
            _, model = train_seg.fit(cfg, run, ctx, h, False, info)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
        ctx.close()
    except BaseException:
        Path(out, f"rank{rank}.error").write_text(traceback.format_exc())
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_torchrun_only_the_segmentation_steps_may_run(monkeypatch, tmp_path: Path, demo_data: Path):
    """Every other step would run once per process on the same files: refused before anything runs."""
    from histowsss.config import ConfigError, load_config
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir

    cfg = load_config("demo", [f"data.manifest={demo_data}", "upper_bound=false"])
    run = RunDir(tmp_path / "run", cfg).init()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"train_cam, make_cam would run in each of the 2 torchrun processes"):
        run_pipeline(cfg, run, stop="make_cam", log=lambda m: None)
    assert not (run.path / "status").exists()  # refused before any step started
    logs: list[str] = []
    assert run_pipeline(cfg, run, start="train_seg_supervised", log=logs.append) == {}  # off: nothing to refuse
    assert logs and all(m.startswith("[off ]") for m in logs)


def test_two_cpu_processes_train_identical_weights(tmp_path: Path):
    from safetensors.torch import load_file

    from histowsss.config import load_config
    from histowsss.data.masks import load_class_mask
    from histowsss.data.synthetic import generate_synthetic_dataset
    from histowsss.engine.atomic import write_png
    from histowsss.engine.run_dir import RunDir
    from histowsss.steps import make_sem_seg_labels
    from histowsss.steps.common import samples_for

    manifest = generate_synthetic_dataset(tmp_path / "data", {"train": 4, "val": 0, "test": 1}, size=64)
    fast = ["train_seg.encoder=test_efficientnet", "train_seg.encoder_weights=none",
            "train_seg.decoder_channels=[16,16,8,8,8]", "train_seg.epochs=2", "train_seg.batch_size=2",
            "train_seg.crop_size=32", "train_seg.crops_per_image=3"]
    cfg = load_config("demo", [f"data.manifest={manifest}", "device=cpu", *fast])
    run = RunDir(tmp_path / "run", cfg).init()
    with run.step("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg)):
        for s in samples_for(cfg, ["train"]):
            write_png(run.path / "pseudo" / f"{s.name}.png", load_class_mask(s, cfg.data))
    import segmentation_models_pytorch  # noqa: F401  (imported once here, inherited by the forked ranks)
    import torch.multiprocessing as mp

    fork = mp.get_context("fork")  # forked ranks skip re-importing torch / smp (seconds each on a busy CPU)
    port = _free_port()
    procs = [fork.Process(target=_worker, args=(r, port, str(manifest), str(run.path), str(tmp_path), fast))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = "\n".join(e.read_text() for e in sorted(tmp_path.glob("rank*.error")))
    assert all(p.exitcode == 0 for p in procs) and not errors, errors or [p.exitcode for p in procs]
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        np.testing.assert_array_equal(w0[k].numpy(), w1[k].numpy(), err_msg=k)
    # the weights moved, and only rank 0 wrote the run's files
    from histowsss.models.segnet import build_segnet
    import torch

    torch.manual_seed(cfg.train_seg.seed)
    init = build_segnet(cfg.train_seg, 2).state_dict()
    assert any(not np.array_equal(init[k].numpy(), w0[k].numpy()) for k in w0 if k.endswith("weight"))
    st = run.status("train_seg")
    assert st["state"] == "done" and st["world_size"] == 2
    log = [json.loads(x) for x in (run.path / "logs" / "train_seg.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[0]["crops"] == 12  # 4 images x 3 crops, shared by 2 ranks x batch 2 x 3 steps
    assert (run.path / "checkpoints" / "seg.safetensors").exists()


def _folder_worker(rank: int, port: int, folder: str, out: str) -> None:
    """One rank of a two-node job (LOCAL_RANK 0 on both "nodes"): check that it sees rank 0's run folder."""
    try:
        import torch

        os.environ.update({"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"})
        torch.set_num_threads(1)
        ctx = init_distributed("cpu")
        try:
            ctx.check_shared_folder(folder)
            Path(out, f"rank{rank}.ok").write_text("ok")
        except RuntimeError as e:
            Path(out, f"rank{rank}.refused").write_text(str(e))
        finally:
            ctx.close()
    except BaseException:
        import traceback

        Path(out, f"rank{rank}.error").write_text(traceback.format_exc())
        os._exit(1)


@pytest.mark.parametrize("case", ["shared", "not_shared", "unwritable"])
def test_every_rank_stops_when_a_node_does_not_see_the_run_folder(tmp_path: Path, case: str):
    import torch.multiprocessing as mp

    (tmp_path / "a_file").write_text("not a folder")
    folders = {"shared": [tmp_path / "run", tmp_path / "run"],
               "not_shared": [tmp_path / "run", tmp_path / "node1_local_run"],
               "unwritable": [tmp_path / "a_file" / "run", tmp_path / "a_file" / "run"]}[case]
    fork, port = mp.get_context("fork"), _free_port()
    procs = [fork.Process(target=_folder_worker, args=(r, port, str(folders[r]), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    errors = "\n".join(e.read_text() for e in sorted(tmp_path.glob("rank*.error")))
    assert not errors and all(p.exitcode == 0 for p in procs), errors or [p.exitcode for p in procs]
    if case == "shared":
        assert sorted(x.name for x in tmp_path.glob("rank*.ok")) == ["rank0.ok", "rank1.ok"]
        assert not list(folders[0].glob(".ddp_shared_check*"))  # rank 0 cleans its marker up
        return
    # both ranks stop with the same message naming the cause and the fix; neither waits forever
    messages = [(tmp_path / f"rank{r}.refused").read_text() for r in range(2)]
    assert messages[0] == messages[1]
    if case == "not_shared":
        assert "rank(s) [1]" in messages[0] and str(folders[0]) in messages[0] and "every node mounts" in messages[0]
    else:
        assert "rank 0 cannot write into the run folder" in messages[0]


_TWO_STEPS = '''
import sys
import time
from pathlib import Path

from histowsss.engine.distributed import init_distributed

out = Path(sys.argv[1])
for step in range(2):
    ctx = init_distributed("cpu")
    ctx.check_shared_folder(out)
    total = ctx.all_reduce_sum([1.0])[0]
    ctx.close()
    if ctx.is_main:
        time.sleep(2)  # rank 0 evaluates alone (eval_seg) while the other rank goes on to the next step
    (out / f"rank{ctx.rank}_step{step}").write_text(str(total))
ctx = init_distributed("cpu")
try:
    ctx.check_same("a" if ctx.rank == 0 else "b", "settings")
except RuntimeError as e:
    (out / f"rank{ctx.rank}_refused").write_text(str(e))
'''


def test_two_distributed_steps_in_one_torchrun_launch(tmp_path: Path):
    """train_seg then train_seg_supervised in one launch, rank 0 evaluating alone between them: the second step joins
    the same process group (destroyed and started again, its ranks met the old group's gloo addresses in torchrun's
    store: 'connection refused'); ranks with other settings stop with one message."""
    import subprocess
    import sys

    script = tmp_path / "two_steps.py"
    script.write_text(_TWO_STEPS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for rank in (0, 1):
        for step in (0, 1):
            assert (tmp_path / f"rank{rank}_step{step}").read_text() == "2.0"
        assert "rank(s) [1] run with other settings than rank 0" in (tmp_path / f"rank{rank}_refused").read_text()
