"""engine/device: device selection and whether the CPU can run bfloat16 autocast natively."""

from __future__ import annotations

import torch

from histowsss.engine.device import cpu_has_bf16, resolve_device


def test_auto_resolves_to_an_available_device():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\n"
                   "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    old = tmp_path / "old"
    old.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    none = tmp_path / "none"
    none.write_text("processor\t: 0\n")
    assert cpu_has_bf16(str(x86)) is True and cpu_has_bf16(str(arm)) is True
    assert cpu_has_bf16(str(old)) is False
    assert cpu_has_bf16(str(none)) is None and cpu_has_bf16(str(tmp_path / "absent")) is None


def test_bf16_enabled_follows_the_device_and_names_a_cpu_without_bf16(monkeypatch, capsys):
    from histowsss.engine import device as device_mod

    monkeypatch.setattr(device_mod, "_CHECKED", set())
    monkeypatch.setattr(device_mod, "cpu_has_bf16", lambda: False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert device_mod.bf16_enabled(cuda, True, False, "x.cpu_amp") is True
    assert device_mod.bf16_enabled(cuda, False, True, "x.cpu_amp") is False
    assert device_mod.bf16_enabled(cpu, True, False, "x.cpu_amp") is False
    assert capsys.readouterr().out == ""
    assert device_mod.bf16_enabled(cpu, False, True, "x.cpu_amp") is True
    assert device_mod.bf16_enabled(cpu, False, True, "x.cpu_amp") is True
    assert device_mod.bf16_enabled(cpu, False, True, "y.cpu_amp", warn=False) is True
    out = capsys.readouterr().out
    assert out.count("no bfloat16 instructions") == 1 and "x.cpu_amp=false" in out  # once per option, named
    # predict's flag is named for the options predict decides, not for training's
    device_mod.bf16_enabled(cpu, False, True, "eval_seg.cpu_amp")
    assert "histowsss predict --no-cpu-amp" in capsys.readouterr().out
    device_mod.bf16_enabled(cpu, False, True, "train_seg.cpu_amp")
    out = capsys.readouterr().out
    assert "train_seg.cpu_amp=false" in out and "predict" not in out
    monkeypatch.setattr(device_mod, "cpu_has_bf16", lambda: True)
    assert device_mod.bf16_enabled(cpu, False, True, "z.cpu_amp") is True and capsys.readouterr().out == ""


def test_autocast_bf16_is_a_no_op_when_off_even_where_autocast_is_unknown():
    from histowsss.engine.device import autocast_bf16

    with autocast_bf16(torch.device("cpu"), True):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_bf16(torch.device("cpu"), False):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_bf16(torch.device("meta"), False):  # torch.autocast(device_type="meta", enabled=False) raises
        pass
