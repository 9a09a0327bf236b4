"""StagedBackbone: timm CNNs and vision transformers (pathology foundation models) as the CAM / IRN backbone."""

from __future__ import annotations

import pytest
import timm
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from histowsss.config import BackboneConfig
from histowsss.models.backbone import StagedBackbone
from histowsss.models.irnet import IRNet
from histowsss.models.weights import WeightsError

torch.manual_seed(0)


def _save(model: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_vit_weights_file_gives_timms_own_token_features(tmp_path):
    """A UNI-style file (timm ViT with LayerScale) loads with its model_kwargs and normalisation; at the size it was
    built for, the feature map is timm's forward_features (final norm) without the class token, token for token."""
    ref = timm.create_model("vit_tiny_patch16_224", init_values=1e-5, num_classes=0, pretrained=False).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # not the initial values
    path = _save(ref, tmp_path / "uni_like.safetensors")
    cfg = BackboneConfig(name="vit_tiny_patch16_224", weights=path, model_kwargs={"init_values": 1e-5},
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    bb = StagedBackbone(cfg).eval()
    assert bb.mean == (0.485, 0.456, 0.406) and bb.std == (0.229, 0.224, 0.225)
    x = torch.randn(1, 3, 224, 224)
    y, feats = bb(x, collect=(3,))
    with torch.no_grad():
        want = ref.forward_features(x)[:, 1:].transpose(1, 2).reshape(1, 192, 14, 14)
    assert y.shape == (1, 192, 14, 14) and torch.allclose(y, want, atol=1e-5)
    assert torch.equal(feats[3], y)  # the last level is the output
    # without the LayerScale argument the file is refused, naming the argument; without its normalisation too
    with pytest.raises(WeightsError, match="init_values: 1.0e-5"):
        StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights=path, mean=cfg.mean, std=cfg.std))
    with pytest.raises(WeightsError, match="backbone.mean and backbone.std"):
        StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights=path, model_kwargs={"init_values": 1e-5}))
    # a file without the final norm every level goes through is incomplete, not a classifier head
    incomplete = tmp_path / "no_norm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items() if not k.startswith("norm.")}, str(incomplete))
    with pytest.raises(WeightsError, match="no final norm"):
        StagedBackbone(cfg.model_copy(update={"weights": str(incomplete)}))


@pytest.mark.parametrize("name,kwargs", [("vit_tiny_patch16_224", {}),
                                         ("vit_small_patch14_reg4_dinov2", {"img_size": 224, "depth": 4})])
def test_vit_any_image_size_on_the_16px_grid_frozen_whole(name, kwargs):
    """Any image size gives a ceil(H/16) x ceil(W/16) map (a patch-14 model with register tokens included); four
    levels; the frozen trunk is every unit, so training from the cache runs nothing."""
    bb = StagedBackbone(BackboneConfig(name=name, weights="none", model_kwargs=kwargs)).eval()
    y, feats = bb(torch.randn(2, 3, 100, 130), collect=(0, 1, 2, 3))
    assert y.shape[2:] == (7, 9) and [f.shape for f in feats.values()] == [y.shape] * 4
    assert len(bb.features) == 4 and all(f.reduction == 16 for f in bb.features)
    assert bb.trunk_units == len(bb.units) and not any(p.requires_grad for p in bb.parameters())
    assert bb(y, bb.trunk_units)[0] is y
    with pytest.raises(RuntimeError, match="from the image"):
        bb(y, 3)


@pytest.mark.parametrize("name,kwargs", [("vit_tiny_patch16_224", {"depth": 2}),
                                         ("vit_small_patch14_reg4_dinov2", {"img_size": 224, "depth": 2})])
def test_vit_odd_sizes_token_for_token_timms_forward(name, kwargs, tmp_path):
    """At an odd size the map is timm's own forward (its position-embedding resampling) on the image padded to a
    multiple of 16 and, for patch 14, resized by 14/16."""
    ref = timm.create_model(name, num_classes=0, pretrained=False, dynamic_img_size=True, **kwargs).eval()
    path = _save(ref, tmp_path / "w.safetensors")
    bb = StagedBackbone(BackboneConfig(name=name, weights=path, model_kwargs=kwargs, mean=(0.5, 0.5, 0.5),
                                       std=(0.5, 0.5, 0.5))).eval()
    x = torch.randn(1, 3, 100, 130)
    p = ref.patch_embed.patch_size[0]
    padded = torch.nn.functional.pad(x, (0, 144 - 130, 0, 112 - 100))
    if p != 16:
        padded = torch.nn.functional.interpolate(padded, size=(7 * p, 9 * p), mode="bilinear", align_corners=False,
                                                 antialias=True)
    with torch.no_grad():
        tokens = ref.forward_features(padded)[:, ref.num_prefix_tokens:]
    assert torch.allclose(bb(x)[0], tokens.transpose(1, 2).reshape(1, -1, 7, 9), atol=1e-5)


def test_vit_trained_whole_or_frozen_whole():
    bb = StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights="none", frozen_stages=0))
    assert bb.trunk_units == 0 and all(p.requires_grad for p in bb.parameters())
    y, _ = bb(torch.randn(1, 3, 32, 48))
    y.mean().backward()
    assert bb.units[0].pos_embed.grad is not None
    with pytest.raises(WeightsError, match="frozen whole"):
        StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights="none", frozen_stages=2))
    for stride in (8, 32):  # 32 passes no output_stride to timm: the ViT builds, and is refused all the same
        with pytest.raises(WeightsError, match="output_stride: 16"):
            StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights="none", output_stride=stride))


def test_unsupported_or_hub_backbones_are_refused_clearly():
    with pytest.raises(ValidationError, match="model hub"):
        BackboneConfig(name="hf-hub:MahmoodLab/UNI", weights="none")
    with pytest.raises(ValidationError, match="output_stride"):
        BackboneConfig(name="vit_tiny_patch16_224", model_kwargs={"output_stride": 8})
    with pytest.raises(WeightsError, match="VisionTransformer"):
        StagedBackbone(BackboneConfig(name="swin_tiny_patch4_window7_224", weights="none"))
    with pytest.raises(WeightsError, match="distilled"):
        StagedBackbone(BackboneConfig(name="deit_tiny_distilled_patch16_224", weights="none"))
    with pytest.raises(WeightsError, match="'init_values'") as e:  # a CNN: the argument named, not output_stride
        StagedBackbone(BackboneConfig(weights="none", model_kwargs={"init_values": 1e-5}))
    assert "backbone.output_stride" not in str(e.value)


def test_model_card_numbers_as_yaml_writes_them():
    """``1e-5`` is text to YAML 1.1; in model_kwargs it is read as the number the card means (names stay text)."""
    from histowsss.config import load_config

    cfg = load_config("demo", ["backbone.model_kwargs={init_values: 1e-5, act_layer: silu, img_size: 224}"])
    assert cfg.backbone.model_kwargs == {"init_values": 1e-5, "act_layer": "silu", "img_size": 224}


def test_average_pooling_vits_norm_every_token_with_fc_norm():
    bb = StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights="none",
                                       model_kwargs={"global_pool": "avg", "class_token": False, "depth": 1}))
    assert isinstance(bb.vit.norm, torch.nn.LayerNorm) and bb.vit.num_prefix_tokens == 0


def test_rpnet_mid_level_past_a_shallow_vit_is_named():
    from histowsss.models.rpnet import RPNet

    with pytest.raises(ValueError, match="mid_level 2: the backbone has feature levels 0..1"):
        RPNet(BackboneConfig(name="vit_tiny_patch16_224", weights="none", model_kwargs={"depth": 2}), 1)
    # counted from the end, as a Python index (accepted before the check existed)
    net = RPNet(BackboneConfig(name="vit_tiny_patch16_224", weights="none", model_kwargs={"depth": 2}), 1,
                options={"mid_level": -2})
    assert net.mid_level == -2


def test_position_embedding_of_another_size_names_img_size(tmp_path):
    ref = timm.create_model("vit_tiny_patch16_224", img_size=256, num_classes=0, pretrained=False)
    path = _save(ref, tmp_path / "vit256.safetensors")
    norm = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    with pytest.raises(WeightsError, match="img_size: 256"):
        StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights=path, **norm))
    bb = StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights=path, model_kwargs={"img_size": 256},
                                       **norm))
    assert torch.equal(bb.units[0].pos_embed, ref.pos_embed)
    # a UNI2-style file (registers, no class position embedded, patch 14) asks for each argument it needs
    kw = {"img_size": 224, "patch_size": 14, "depth": 1, "num_heads": 2, "embed_dim": 32, "no_embed_class": True,
          "reg_tokens": 8}
    path2 = _save(timm.create_model("vit_giant_patch14_224", num_classes=0, **kw), tmp_path / "uni2_like.safetensors")
    with pytest.raises(WeightsError, match=r"reg_tokens: 8, no_embed_class: true, img_size: 224"):
        StagedBackbone(BackboneConfig(name="vit_giant_patch14_224", weights=path2, **norm,
                                      model_kwargs={k: v for k, v in kw.items() if k not in ("no_embed_class",
                                                                                             "reg_tokens")}))
    with pytest.raises(WeightsError, match=r"patch_size: 14"):
        StagedBackbone(BackboneConfig(name="vit_giant_patch14_224", weights=path2, **norm,
                                      model_kwargs={**kw, "patch_size": 16}))


def test_irn_on_a_vit_takes_the_image_as_its_stride4_level():
    net = IRNet(BackboneConfig(name="vit_tiny_patch16_224", weights="none"), edge_channels=8, dp_channels=8)
    assert net.image_level and net.reductions[0] == 4
    feats = net.extract(torch.randn(1, 3, 70, 90))
    assert feats[0].shape == (1, 3, 18, 23) and all(f.shape[2:] == (5, 6) for f in feats[1:])
    edge, dp = net(torch.randn(1, 3, 70, 90))
    assert edge.shape == (1, 18, 23) and dp.shape == (1, 2, 18, 23)
    assert not IRNet(BackboneConfig(weights="none")).image_level  # a CNN has its own stride-4 level


def test_model_card_arguments_with_layers_by_name():
    """UNI2-h / Virchow-style arguments: SwiGLU MLP and SiLU by name (from a fixed list, never evaluated), register
    tokens, no class embedding; a model card's num_classes 0 / dynamic_img_size true are accepted as they agree."""
    kw = {"img_size": 224, "patch_size": 14, "depth": 2, "num_heads": 4, "embed_dim": 96, "init_values": 1e-5,
          "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "mlp_layer": "SwiGLUPacked", "act_layer": "silu",
          "reg_tokens": 8, "num_classes": 0, "dynamic_img_size": True}
    bb = StagedBackbone(BackboneConfig(name="vit_giant_patch14_224", weights="none", model_kwargs=kw)).eval()
    assert type(bb.units[1].mlp).__name__ == "GluMlp" and isinstance(bb.units[1].mlp.act, torch.nn.SiLU)
    assert bb.vit.num_prefix_tokens == 9 and bb(torch.randn(1, 3, 50, 70))[0].shape == (1, 96, 4, 5)
    with pytest.raises(WeightsError, match="one of Mlp, SwiGLUPacked"):
        StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights="none",
                                      model_kwargs={"mlp_layer": "os.system"}))
    with pytest.raises(ValidationError, match="num_classes"):
        BackboneConfig(name="vit_tiny_patch16_224", model_kwargs={"num_classes": 2})


def test_what_a_users_file_or_card_gets_wrong_is_named(tmp_path):
    """Mismatch hints name the width, the depth or the missing LayerScale (not arguments already right); a file whose
    keys carry a prefix, or a DINOv2-style unused mask_token, loads; other ViT families, 0-255 normalisation,
    expressions and Python paths copied from a card, and a missing file are refused with the fix."""
    norm = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    ls = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=2, init_values=1e-5)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=2)
    p_ls, p_plain = _save(ls, tmp_path / "ls.safetensors"), _save(plain, tmp_path / "plain.safetensors")

    def refused(name: str, path: str, kwargs: dict) -> str:
        with pytest.raises(WeightsError) as e:
            StagedBackbone(BackboneConfig(name=name, weights=path, model_kwargs=kwargs, **norm))
        return str(e.value)

    msg = refused("vit_small_patch16_224", p_ls, {"depth": 2, "init_values": 1e-5})
    assert "192 wide" in msg and "init_values" not in msg.split("model_kwargs")[-1]
    assert "{depth: 2}" in refused("vit_tiny_patch16_224", p_ls, {"depth": 3, "init_values": 1e-5})
    assert "{no init_values (the file has no LayerScale)}" in refused("vit_tiny_patch16_224", p_plain,
                                                                      {"depth": 2, "init_values": 1e-5})
    prefixed = tmp_path / "prefixed.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in ls.state_dict().items()}, str(prefixed))
    bb = StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights=str(prefixed),
                                       model_kwargs={"depth": 2, "init_values": 1e-5}, **norm))
    assert torch.equal(bb.units[0].pos_embed, ls.pos_embed)
    masked = tmp_path / "masked.safetensors"
    save_file({**{k: v.contiguous() for k, v in plain.state_dict().items()}, "mask_token": torch.zeros(1, 192)},
              str(masked))
    StagedBackbone(BackboneConfig(name="vit_tiny_patch16_224", weights=str(masked), model_kwargs={"depth": 2}, **norm))
    assert "builds Eva, not timm's VisionTransformer" in refused("eva02_tiny_patch14_224", "none", {})
    assert "backbone.weights not found" in refused("vit_tiny_patch16_224", str(tmp_path / "gone.safetensors"), {})
    with pytest.raises(ValidationError, match="0-255 scale"):
        BackboneConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    with pytest.raises(ValidationError, match="is an expression"):
        BackboneConfig(model_kwargs={"mlp_ratio": "2.66667*2"})
    with pytest.raises(ValidationError, match="Python path"):
        BackboneConfig(model_kwargs={"act_layer": "torch.nn.SiLU"})
