"""train_seg's AdamW: the fused kernel where the device has one, the same update as PyTorch's default."""

from __future__ import annotations

import copy

import torch

from histowsss.engine.optim import adamw, fused_supported


def _model() -> torch.nn.Module:
    """(No bias before the BatchNorm: its gradient is zero up to rounding, and Adam divides that rounding by its
    eps, so kernels that round differently (PyTorch's own fused one on an AVX2 CPU: 2e-5) move it differently.)"""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 2, 1))


def _train(opt_fn, steps: int = 5) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    m = _model()
    opt = opt_fn([{"params": list(m[0].parameters()), "lr": 3e-4}, {"params": list(m[1:].parameters()), "lr": 1e-3}])
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    return m, opt


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    with torch.no_grad():
        return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def test_fused_on_the_cpu_unless_asked_not_to():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert fused_supported(params)
    assert adamw(params, weight_decay=0.0).defaults.get("fused") is True
    assert not adamw(params, weight_decay=0.0, fused=False).defaults.get("fused")
    ints = [torch.zeros(3, dtype=torch.int64)]
    assert not fused_supported(ints) and not fused_supported([])


def test_the_same_update_as_pytorchs_default_with_the_groups_learning_rates():
    ref, _ = _train(lambda g: torch.optim.AdamW(g, weight_decay=1e-4))
    got, opt = _train(lambda g: adamw(g, weight_decay=1e-4))
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[1]["lr"] == 1e-3
    assert all(g["fused"] for g in opt.param_groups)
    moved = _max_diff(ref, _model())
    diff = _max_diff(ref, got)
    assert moved > 1e-3 and diff < 1e-6


def test_a_state_saved_by_the_default_optimizer_resumes_in_the_fused_one():
    """A train_seg killed before stop 41 resumes from its <tag>_train_state.pt (PyTorch keeps the implementation the
    state was saved with) and steps as the default optimizer would have."""
    ref, ref_opt = _train(lambda g: torch.optim.AdamW(g, weight_decay=1e-4), steps=3)
    m = _model()
    m.load_state_dict(ref.state_dict())
    opt = adamw([{"params": list(m[0].parameters()), "lr": 3e-4}, {"params": list(m[1:].parameters()), "lr": 1e-3}],
                weight_decay=1e-4)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # as read from the file, not shared with ref_opt
    x = torch.randn(4, 3, 12, 12)
    for model, o in ((m, opt), (ref, ref_opt)):
        o.zero_grad()
        model(x).square().mean().backward()
        o.step()
    assert _max_diff(m, ref) < 1e-6 and _max_diff(m, _model()) > 1e-4
