"""Loading ImageNet weights: everything must fit, or the file is refused with the architecture named."""

from __future__ import annotations

import pytest
import timm

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
