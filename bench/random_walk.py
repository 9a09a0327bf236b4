"""Benchmark: sparse (stencil) IRN random walk vs the dense reference formulation.

Usage::

    python bench/random_walk.py --profile cpu

Writes ``bench/results/random_walk.<profile>.json``. Steps:

(a) correctness: max |sparse - dense| on a 64x64 grid (C=3, radius 5,
    beta 10, exp_times 8);
(b) speed at a 512 px image (128x128 stride-4 grid, C=2): the sparse walk vs
    the dense reference (16384^2 float32 matrix squared ``exp_times`` times).
    With ``--dense-squarings N < exp_times`` (default 1 on CPU: one squaring
    takes about 100 s with 2 threads) only N squarings are timed and the total
    is extrapolated as ``build + exp_times * mean(squaring) + final product``;
    the JSON says so (``dense_512px_extrapolated``);
(c) scaling of the sparse walk for 256, 512, 1024, 2048 px images (grid =
    px / 4, C=2): wall time and peak memory, each size in a fresh subprocess
    (peak RSS from ``resource.getrusage``; ``walk_extra_mb`` is the peak minus
    the high-water mark just before the walk; on CUDA
    ``torch.cuda.max_memory_allocated``).

Every measurement runs in a fresh subprocess (``--worker``) with
``torch.set_num_threads(--threads)`` (default 2) and ``OMP_WAIT_POLICY=PASSIVE``
unless set (spinning OpenMP threads make the ~70 small ops per walk step
stall badly on a shared CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RADIUS, BETA, EXP_TIMES = 5, 10.0, 8


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _inputs(torch, grid: int, c: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    boundary = (torch.rand(grid, grid, generator=g) ** 3).to(device)
    cams = torch.rand(c, grid, grid, generator=g).to(device)
    return cams, boundary


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from histowsss.ops.random_walk import dense_random_walk, random_walk, transition_matrix_dense

    dev = args.device
    grid = args.px // 4
    cams, boundary = _inputs(torch, grid, args.channels, dev)
    _sync(torch, dev)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    rss_before = _rss_mb()
    out: dict = {"px": args.px, "grid": grid, "pixels": grid * grid, "channels": args.channels}

    if args.worker == "check":
        t0 = time.perf_counter()
        s = random_walk(cams, boundary, RADIUS, BETA, EXP_TIMES)
        _sync(torch, dev)
        t1 = time.perf_counter()
        d = dense_random_walk(cams, boundary, RADIUS, BETA, EXP_TIMES)
        _sync(torch, dev)
        t2 = time.perf_counter()
        out.update(
            max_abs_diff=(s - d).abs().max().item(),
            max_abs_value=d.abs().max().item(),
            sparse_s=t1 - t0,
            dense_s=t2 - t1,
        )
    elif args.worker == "sparse":
        kw = {"method": args.method}
        if args.compute_dtype == "input":
            kw["compute_dtype"] = None
        t0 = time.perf_counter()
        s = random_walk(cams, boundary, RADIUS, BETA, EXP_TIMES, **kw)
        _sync(torch, dev)
        out.update(wall_s=time.perf_counter() - t0, method=args.method, compute_dtype=args.compute_dtype)
        out["checksum"] = s.double().sum().item()
    elif args.worker == "dense":
        t0 = time.perf_counter()
        t = transition_matrix_dense(boundary, RADIUS, BETA)
        _sync(torch, dev)
        build_s = time.perf_counter() - t0
        sq = []
        for _ in range(args.squarings):
            ts = time.perf_counter()
            t = t @ t
            _sync(torch, dev)
            sq.append(time.perf_counter() - ts)
        ts = time.perf_counter()
        x = cams * (1 - boundary)
        rw = x.reshape(args.channels, -1) @ t
        _sync(torch, dev)
        final_s = time.perf_counter() - ts
        full = args.squarings >= EXP_TIMES
        mean_sq = sum(sq) / len(sq) if sq else 0.0
        out.update(
            build_s=build_s,
            squaring_s=sq,
            final_matmul_s=final_s,
            squarings_timed=args.squarings,
            extrapolated=not full,
            wall_s=(build_s + sum(sq) + final_s) if full else build_s + EXP_TIMES * mean_sq + final_s,
            matrix_bytes=t.numel() * t.element_size(),
        )
        if full:
            s = random_walk(cams, boundary, RADIUS, BETA, EXP_TIMES)
            out["max_abs_diff_vs_sparse"] = (s - rw.reshape(s.shape)).abs().max().item()
    out["peak_rss_mb"] = _rss_mb()
    out["rss_before_walk_mb"] = rss_before
    out["walk_extra_mb"] = out["peak_rss_mb"] - rss_before
    if dev.startswith("cuda"):
        out["gpu_peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    return out


def _run_worker(ns: argparse.Namespace, **kw) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--profile", ns.profile, "--threads", str(ns.threads)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    print("  $", " ".join(cmd[1:]), flush=True)
    env = os.environ.copy()
    # The stencil issues ~70 small parallel ops per step; with spinning OpenMP
    # threads on a shared/oversubscribed CPU each op can stall for a scheduler
    # time slice (measured 40-100x slowdowns). Passive waiting avoids that.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"worker failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "uncommitted"
    except OSError:
        return "uncommitted"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense-squarings", type=int, default=None,
                    help=f"squarings timed at 512 px (default: 1 on cpu, {EXP_TIMES} on cuda)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--compare-methods", type=int, nargs="*", default=[512, 2048],
                    help="image sizes at which csr and float32-compute variants are also timed")
    ap.add_argument("--out", type=Path, default=None)
    # worker mode (internal)
    ap.add_argument("--worker", choices=["check", "sparse", "dense"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--px", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--channels", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--squarings", type=int, default=EXP_TIMES, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="stencil", help=argparse.SUPPRESS)
    ap.add_argument("--compute-dtype", default="auto", choices=["auto", "input"], help=argparse.SUPPRESS)
    ns = ap.parse_args()
    ns.device = "cuda" if ns.profile == "cuda" else "cpu"

    if ns.worker:
        print(json.dumps(worker(ns)))
        return

    t_start = time.perf_counter()
    squarings = ns.dense_squarings if ns.dense_squarings is not None else (1 if ns.profile == "cpu" else EXP_TIMES)
    print("(a) sparse vs dense, 64x64 grid", flush=True)
    check = _run_worker(ns, worker="check", px=256, channels=3)
    print("  ", check, flush=True)
    print("(b) sparse vs dense, 512 px image (128x128 grid)", flush=True)
    sparse512 = _run_worker(ns, worker="sparse", px=512)
    print("  ", sparse512, flush=True)
    dense512 = _run_worker(ns, worker="dense", px=512, squarings=squarings)
    print("  ", dense512, flush=True)
    print("(c) sparse scaling", flush=True)
    scaling = {}
    for px in ns.sizes:
        r = sparse512 if px == 512 else _run_worker(ns, worker="sparse", px=px)
        scaling[str(px)] = r
        print("  ", px, r, flush=True)
    variants = {}
    for px in ns.compare_methods:
        variants[str(px)] = {
            "stencil_float64_accum_s": scaling.get(str(px), {}).get("wall_s"),
            "stencil_float32_s": _run_worker(ns, worker="sparse", px=px, compute_dtype="input")["wall_s"],
            "csr_float64_accum_s": _run_worker(ns, worker="sparse", px=px, method="csr")["wall_s"],
        }
        print("  variants", px, variants[str(px)], flush=True)

    mem_key = "gpu_peak_extra_mb" if ns.device == "cuda" else "walk_extra_mb"
    mem_ratio = None
    if "1024" in scaling and "2048" in scaling:
        mem_ratio = scaling["2048"][mem_key] / scaling["1024"][mem_key]
    speedup = dense512["wall_s"] / sparse512["wall_s"]
    metrics = {
        "max_abs_diff_64x64": check["max_abs_diff"],
        "max_abs_value_64x64": check["max_abs_value"],
        "sparse_64x64_s": check["sparse_s"],
        "dense_64x64_s": check["dense_s"],
        "sparse_512px_s": sparse512["wall_s"],
        "dense_512px_s": dense512["wall_s"],
        "dense_512px_extrapolated": dense512["extrapolated"],
        "dense_512px_squarings_timed": dense512["squarings_timed"],
        "dense_512px_build_s": dense512["build_s"],
        "dense_512px_squaring_s": dense512["squaring_s"],
        "dense_512px_final_matmul_s": dense512["final_matmul_s"],
        "dense_512px_peak_rss_mb": dense512["peak_rss_mb"],
        "dense_512px_matrix_mb": dense512["matrix_bytes"] / 2**20,
        "speedup_vs_dense_512px": speedup,
        "sparse_scaling": {
            px: {k: r[k] for k in ("grid", "pixels", "wall_s", "peak_rss_mb", "rss_before_walk_mb",
                                   "walk_extra_mb", "gpu_peak_extra_mb") if k in r}
            for px, r in scaling.items()
        },
        "memory_ratio_2048_vs_1024": mem_ratio,
        "memory_metric": mem_key,
        "method_variants": variants,
    }
    if "max_abs_diff_vs_sparse" in dense512:
        metrics["max_abs_diff_512px"] = dense512["max_abs_diff_vs_sparse"]
    checks = [
        {"name": "max_abs_diff_64x64", "value": check["max_abs_diff"], "target": "<= 1e-4",
         "met": check["max_abs_diff"] <= 1e-4},
        {"name": "speedup_vs_dense_512px", "value": speedup,
         "target": ">= 100" + (" (dense time extrapolated)" if dense512["extrapolated"] else ""),
         "met": speedup >= 100},
        {"name": "memory_growth_linear", "value": mem_ratio,
         "target": "<= 4.5 (peak extra memory 2048 px / 1024 px; pixels ratio 4)",
         "met": mem_ratio is not None and mem_ratio <= 4.5},
    ]
    result = {
        "name": "random_walk",
        "profile": ns.profile,
        "command": "python bench/random_walk.py " + " ".join(sys.argv[1:]),
        "commit": _commit(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": __import__("torch").__version__,
        },
        "wall_s": time.perf_counter() - t_start,
        "config": {
            "radius": RADIUS, "beta": BETA, "exp_times": EXP_TIMES, "walk_steps": 2**EXP_TIMES,
            "channels": 2, "check_channels": 3, "threads": ns.threads, "device": ns.device,
            "sizes_px": ns.sizes, "stride": 4, "method": "stencil", "compute_dtype": "auto (float64 accumulate)",
            "dense_squarings_timed": squarings,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "boundary": "rand(H,W)**3", "cams": "rand(C,H,W)",
        },
        "metrics": metrics,
        "checks": checks,
    }
    out = ns.out or ROOT / "bench" / "results" / f"random_walk.{ns.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"checks": checks, "wall_s": result["wall_s"]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
