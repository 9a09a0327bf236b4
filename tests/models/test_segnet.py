"""The smp segmentation network: offline encoder weights, architectures, losses, sliding-window inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histowsss.data.transforms import Normalizer
from histowsss.engine.inference import sliding_window_probs, tile_starts, window
from histowsss.models.segnet import SegNet, seg_loss


def test_imagenet_weights_reach_the_smp_encoder():
    from histowsss.config import BackboneConfig
    from histowsss.models.backbone import StagedBackbone

    net = SegNet("unet", "tf_efficientnet_lite0", "imagenet", num_classes=2).eval()
    ref = StagedBackbone(BackboneConfig(frozen_stages=0, output_stride=32)).eval()  # the CAM stage's loader
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.net.encoder(x)[-1], ref(x)[0], atol=1e-5)
    assert net.mean == (0.5, 0.5, 0.5)
    assert all(k.startswith("model.") for k in net.net.encoder.state_dict())  # smp's tu- layout


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_architectures_forward_backward(arch):
    net = SegNet(arch, "test_efficientnet", "none", num_classes=3,
                 decoder_channels=[16, 16, 8, 8, 8] if arch == "unet" else [32])
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    assert out.shape == (2, 3, 64, 64)
    seg_loss(out, torch.randint(0, 3, (2, 64, 64)), "oeem").backward()
    groups = net.param_groups(1e-3, 0.1)
    assert groups[0]["lr"] == pytest.approx(1e-4) and len(groups[0]["params"]) > 0


def test_losses_ignore_pixels_and_oeem_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    ce = seg_loss(logits, target, "ce")
    ign = target.clone()
    ign[:, :4] = 255
    assert float(seg_loss(logits, ign, "ce")) != pytest.approx(float(ce))
    assert float(seg_loss(logits, torch.full_like(target, 255), "oeem")) == 0.0
    # uniform confidence: OEEM weights are all 1, so it equals CE
    flat = torch.zeros(1, 2, 4, 4)
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    assert float(seg_loss(flat, t, "oeem")) == pytest.approx(float(seg_loss(flat, t, "ce")))
    # confident pixels weigh more: the loss is below CE when the hard pixels are the wrong ones
    lg = torch.zeros(1, 2, 1, 4)
    lg[0, 0, 0, :3] = 4.0  # three easy pixels of class 0, one hard one
    t = torch.zeros(1, 1, 4, dtype=torch.long)
    assert float(seg_loss(lg, t, "oeem")) < float(seg_loss(lg, t, "ce"))
    # GCE is bounded by 1/q
    huge = torch.zeros(1, 2, 1, 1)
    huge[0, 1] = 50.0
    assert float(seg_loss(huge, torch.zeros(1, 1, 1, dtype=torch.long), "gce", q=0.7)) <= 1 / 0.7 + 1e-6
    with pytest.raises(ValueError, match="unknown loss"):
        seg_loss(logits, target, "focal")


def test_windows_and_tiles():
    for blend in ("gaussian", "linear", "mean"):
        w = window(32, blend)
        assert w.shape == (32, 32) and w.max() == pytest.approx(1.0) and w.min() > 0
        np.testing.assert_allclose(w, w[::-1, ::-1])
    assert window(32, "gaussian")[0, 0] < window(32, "gaussian")[16, 16]
    assert tile_starts(100, 32, 0.25) == [0, 24, 48, 68]
    assert tile_starts(20, 32, 0.5) == [0]


class _Pointwise(torch.nn.Module):
    """A 1x1 conv: its output at a pixel depends on that pixel only, so tiling must not change anything."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("blend,tta", [("gaussian", "flip"), ("linear", "dihedral"), ("mean", "none")])
def test_sliding_window_matches_whole_image_for_a_pointwise_net(blend, tta):
    model = _Pointwise()
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    probs = sliding_window_probs(model, img, norm, tile=32, overlap=0.25, blend=blend, tta=tta, batch_size=3,
                                 size_divisor=32)
    with torch.no_grad():
        ref = torch.softmax(model(norm(torch.from_numpy(img)[None])), 1)[0].numpy()
    assert probs.shape == (3, 50, 70)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    small = img[:20, :25]  # smaller than a tile: padded, then cropped back
    assert sliding_window_probs(model, small, norm, tile=32, tta=tta, size_divisor=32).shape == (3, 20, 25)


def test_multiscale_inference_resizes_back_and_averages():
    from histowsss.engine.inference import multiscale_probs

    model = _Pointwise()
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    kw = dict(tile=32, overlap=0.25, blend="gaussian", tta="flip", batch_size=4, size_divisor=32)
    img = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    one = sliding_window_probs(model, img, norm, **kw)
    np.testing.assert_array_equal(multiscale_probs(model, img, norm, [1.0], **kw), one)
    ms = multiscale_probs(model, img, norm, [0.5, 1.0, 1.5], **kw)
    assert ms.shape == (3, 50, 70)
    np.testing.assert_allclose(ms.sum(0), 1.0, atol=1e-5)
    assert not np.allclose(ms, one, atol=1e-3)  # the resized copies do count
    # a flat image looks the same at every scale, so a pointwise network gives the same map
    flat = np.full((40, 60, 3), (200, 120, 160), dtype=np.uint8)
    np.testing.assert_allclose(multiscale_probs(model, flat, norm, [0.5, 1.25], **kw),
                               sliding_window_probs(model, flat, norm, **kw), atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        multiscale_probs(model, img, norm, [0.0], **kw)


def test_seg_ensemble_averages_member_probabilities():
    from torch import nn

    from histowsss.models.segnet import SegEnsemble

    class Fixed(nn.Module):
        def __init__(self, logits, div):
            super().__init__()
            self.logits, self.size_divisor = torch.tensor(logits), div
            self.mean, self.std, self.num_classes = (0.5,) * 3, (0.5,) * 3, 2

        def forward(self, x):
            return self.logits.view(1, 2, 1, 1).expand(x.shape[0], 2, *x.shape[2:])

    ens = SegEnsemble([Fixed([2.0, 0.0], 32), Fixed([0.0, 3.0], 16)])
    p = torch.softmax(ens(torch.zeros(1, 3, 4, 4)), 1)[0, :, 0, 0]
    want = (torch.softmax(torch.tensor([2.0, 0.0]), 0) + torch.softmax(torch.tensor([0.0, 3.0]), 0)) / 2
    assert torch.allclose(p, want, atol=1e-6) and ens.size_divisor == 32
    other = Fixed([0.0, 1.0], 32)
    other.mean = (0.1, 0.2, 0.3)
    with pytest.raises(ValueError, match="normalisation"):
        SegEnsemble([Fixed([1.0, 0.0], 32), other])


class _LayoutSpy(torch.nn.Module):
    """A pointwise net that records, per call, whether it ran under CPU bfloat16 autocast and got channels-last input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu"), x.is_contiguous(memory_format=torch.channels_last)))
        return self.conv(x)


def test_cpu_amp_and_channels_last_tiles():
    """cpu_amp: tiles go through the network under bfloat16 autocast, probabilities stay float32 and close to the
    float32 ones; channels_last (the default) changes the layout only, not the result."""
    spy = _LayoutSpy()
    norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    kw = dict(tile=32, overlap=0.25, tta="flip", batch_size=4, size_divisor=32)
    fp = sliding_window_probs(spy, img, norm, **kw)
    assert spy.seen and all(not amp and cl for amp, cl in spy.seen)
    spy.seen.clear()
    bf = sliding_window_probs(spy, img, norm, cpu_amp=True, **kw)
    assert spy.seen and all(amp for amp, _ in spy.seen)
    assert bf.dtype == np.float32 and not np.array_equal(bf, fp)
    np.testing.assert_allclose(bf, fp, atol=3e-2)
    spy.seen.clear()
    nchw = sliding_window_probs(spy, img, norm, channels_last=False, **kw)
    assert spy.seen and all(not cl for _, cl in spy.seen)
    np.testing.assert_allclose(nchw, fp, atol=1e-6)
    spy.seen.clear()
    sliding_window_probs(spy, img, norm, amp=True, **kw)  # amp is CUDA's switch: no autocast on the CPU
    assert not any(amp for amp, _ in spy.seen)


VITS = [("vit_tiny_patch16_224", {}),  # patch 16, a class token
        ("vit_small_patch14_reg4_dinov2", {"embed_dim": 48, "num_heads": 2})]  # patch 14, register tokens


@pytest.mark.parametrize("encoder,kwargs", VITS)
def test_dpt_on_a_vision_transformer_gives_input_sized_logits_and_trains_every_tensor(encoder, kwargs):
    net = SegNet("dpt", encoder, "none", num_classes=3, decoder_channels=[32], model_kwargs=kwargs)
    assert net.size_divisor == 32 and net.patch == (16 if "patch16" in encoder else 14)
    x = torch.randn(2, 3, 64, 96)  # not square: a 4 x 6 token grid whatever the patch size
    out = net(x)
    assert out.shape == (2, 3, 64, 96)
    seg_loss(out, torch.randint(0, 3, (2, 64, 96)), "ce").backward()
    # the final norm and head DPT never reads are pruned: every trainable tensor gets a gradient (DDP needs it)
    assert not [n for n, p in net.named_parameters() if p.grad is None]
    assert not any(k.startswith(("net.encoder.model.norm.", "net.encoder.model.head.")) for k in net.state_dict())


@pytest.mark.parametrize("encoder,kwargs", VITS)
def test_dpt_encoder_loads_a_foundation_model_file(encoder, kwargs, tmp_path):
    import timm
    from safetensors.torch import save_file

    from histowsss.models.weights import WeightsError

    torch.manual_seed(1)
    kwargs = {**kwargs, "init_values": 1e-5}  # LayerScale, as UNI's
    ref = timm.create_model(encoder, num_classes=0, dynamic_img_size=True, **kwargs).eval()
    path = tmp_path / "fm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="train_seg.encoder_mean and train_seg.encoder_std"):
        SegNet("dpt", encoder, str(path), 2, model_kwargs=kwargs)
    net = SegNet("dpt", encoder, str(path), 2, model_kwargs=kwargs, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)).eval()
    assert net.mean == (0.5, 0.5, 0.5) and net.std == (0.2, 0.2, 0.2)
    p = net.patch
    x = torch.randn(1, 3, 4 * p, 6 * p)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=net.net.encoder._output_indices, intermediates_only=True)
        got, _ = net.net.encoder(x)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    # a model not built as the file was (no LayerScale; timm's DINOv2 has it anyway, but its default width): the
    # error names the config key to set
    left_out, hint = ("init_values", "init_values: 1.0e-5") if not net.patch == 14 else ("embed_dim", "48 wide")
    with pytest.raises(WeightsError, match=r"set train_seg.encoder_model_kwargs \{.*" + hint):
        SegNet("dpt", encoder, str(path), 2, model_kwargs={k: v for k, v in kwargs.items() if k != left_out},
               mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(WeightsError, match="train_seg.encoder_weights not found"):
        SegNet("dpt", encoder, str(tmp_path / "nope.safetensors"), 2, model_kwargs=kwargs, mean=(0.5,) * 3,
               std=(0.2,) * 3)


def test_decoders_say_which_encoders_they_take():
    from histowsss.models.weights import WeightsError

    with pytest.raises(WeightsError, match="set train_seg.architecture: dpt"):
        SegNet("unet", "vit_tiny_patch16_224", "none", 2)
    with pytest.raises(WeightsError, match="dpt needs a vision transformer encoder .* is a timm efficientnet model"):
        SegNet("dpt", "test_efficientnet", "none", 2, model_kwargs={"init_values": 1e-5})  # a ViT card's leftover
    with pytest.raises(WeightsError, match="is a timm eva model"):
        SegNet("dpt", "eva02_tiny_patch14_224", "none", 2)
    # a model card's depth (UNI2-h: a giant ViT 24 blocks deep) reaches timm, though smp's DPT takes `depth` itself
    deep = SegNet("dpt", "vit_tiny_patch16_224", "none", 2, model_kwargs={"depth": 5})
    assert len(deep.net.encoder.model.blocks) == 5 and deep(torch.randn(2, 3, 64, 64)).shape == (2, 2, 64, 64)
    import segmentation_models_pytorch.encoders.timm_vit as timm_vit
    import timm

    assert timm_vit.timm is timm  # put back
    with pytest.raises(ValueError, match="1 value .* or 5"):
        SegNet("dpt", "vit_tiny_patch16_224", "none", 2, decoder_channels=[8, 8])
    net = SegNet("dpt", "vit_tiny_patch16_224", "none", 2, decoder_channels=[16, 16, 32, 32, 24])
    assert net.net.decoder.reassemble_blocks[0].project_to_out_channel.out_channels == 16
    assert net.net.segmentation_head.head[0].in_channels == 24  # the fusion width


def test_a_frozen_encoder_keeps_its_weights_and_normalisation_statistics():
    torch.manual_seed(0)
    net = SegNet("unet", "test_efficientnet", "none", num_classes=2,
                 decoder_channels=[16, 16, 8, 8, 8]).freeze_encoder()
    enc0 = {k: v.clone() for k, v in net.net.encoder.state_dict().items()}
    dec0 = {k: v.clone() for k, v in net.net.decoder.state_dict().items()}
    groups = net.param_groups(1e-2, 0.3)
    assert len(groups) == 1  # the decoder and head only
    opt = torch.optim.AdamW(groups)
    net.train()
    assert not net.net.encoder.training and net.net.decoder.training
    seg_loss(net(torch.randn(2, 3, 64, 64)), torch.randint(0, 2, (2, 64, 64)), "ce").backward()
    opt.step()
    # weights and BatchNorm running statistics of the encoder as they were; the decoder learned
    assert all(torch.equal(v, net.net.encoder.state_dict()[k]) for k, v in enc0.items())
    assert any(not torch.equal(v, net.net.decoder.state_dict()[k]) for k, v in dec0.items())


def test_train_seg_encoder_settings_are_checked_as_the_backbone_s():
    from pydantic import ValidationError

    from histowsss.config import TrainSegConfig

    ts = TrainSegConfig(encoder_model_kwargs={"init_values": "1e-5"})  # a model card's text reads as the number
    assert ts.encoder_model_kwargs == {"init_values": 1e-5}
    # H-optimus-0's card says dynamic_img_size: false; histowsss resamples the position embedding itself
    assert TrainSegConfig(encoder_model_kwargs={"dynamic_img_size": False}).encoder_model_kwargs
    net = SegNet("dpt", "vit_tiny_patch16_224", "none", 2, [16], {"dynamic_img_size": False})
    assert net(torch.randn(2, 3, 64, 96)).shape == (2, 2, 64, 96)
    for bad, why in [({"encoder_mean": (123.675, 116.28, 103.53), "encoder_std": (58.4, 57.1, 57.4)}, "0-255 scale"),
                     ({"encoder_mean": (0.5, 0.5, 0.5), "encoder_std": (0.2, 0.0, 0.2)}, "must be positive"),
                     ({"encoder_mean": (0.5, 0.5, 0.5)}, "encoder_mean is set and train_seg.encoder_std is not"),
                     ({"architecture": "dpt"}, "no ImageNet weights for one are packaged"),
                     ({"architecture": "dpt", "encoder": "vit_large_patch16_224", "encoder_weights": "/m/uni.bin"},
                      "set train_seg.encoder_mean and train_seg.encoder_std"),
                     ({"architecture": "dpt", "encoder_weights": "none", "decoder_channels": [8, 8]},
                      "1 value .* or 5"),
                     ({"decoder_channels": [8]}, "for unet needs 5 values"),
                     ({"encoder_model_kwargs": {"mlp_ratio": "2.66667*2"}}, "is an expression"),
                     ({"encoder_model_kwargs": {"act_layer": "torch.nn.SiLU"}}, "Python path"),
                     ({"encoder_model_kwargs": {"in_chans": 4}}, "set by histowsss"),
                     ({"encoder": "hf-hub:MahmoodLab/UNI"}, "model hub")]:
        with pytest.raises(ValidationError, match=why):
            TrainSegConfig(**bad)
    from histowsss.models.weights import WeightsError

    with pytest.raises(WeightsError, match="mlp_layer 'MyMlp'"):
        SegNet("dpt", "vit_tiny_patch16_224", "none", 2, model_kwargs={"mlp_layer": "MyMlp"})


def test_the_network_check_meets_the_file_as_the_build_does(tmp_path):
    """check_segnet (run before any step) checks the file against the encoder before its unread layers are pruned,
    as the real build loads it: an average-pooling ViT's fc_norm in the file is no mismatch. smp's own arguments in
    encoder_model_kwargs are refused (they would change the network, e.g. a sigmoid on the logits)."""
    import timm
    from safetensors.torch import save_file

    from histowsss.config import TrainSegConfig
    from histowsss.models.segnet import build_segnet, check_segnet
    from histowsss.models.weights import WeightsError, read_state_dict

    kw = {"global_pool": "avg", "class_token": False, "fc_norm": True}
    m = timm.create_model("vit_tiny_patch16_224", num_classes=0, **kw)
    assert any(k.startswith("fc_norm.") for k in m.state_dict())
    path = tmp_path / "avg.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    ts = TrainSegConfig(architecture="dpt", encoder="vit_tiny_patch16_224", encoder_weights=str(path),
                        encoder_model_kwargs=kw, encoder_mean=(0.5,) * 3, encoder_std=(0.2,) * 3, decoder_channels=[16])
    check_segnet(ts, 2)
    build_segnet(ts, 2)
    shapes = read_state_dict(path, shapes_only=True)
    assert shapes["pos_embed"].device.type == "meta" and shapes["pos_embed"].shape == m.pos_embed.shape
    torch.save(m.state_dict(), tmp_path / "avg.bin")
    assert read_state_dict(tmp_path / "avg.bin", shapes_only=True)["pos_embed"].shape == m.pos_embed.shape
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="cut.safetensors: unreadable safetensors file"):
        read_state_dict(tmp_path / "cut.safetensors")
    with pytest.raises(WeightsError, match=r"\['activation'\]: arguments of smp's Unet itself"):
        SegNet("unet", "test_efficientnet", "none", 2, model_kwargs={"activation": "sigmoid"})


@pytest.mark.parametrize("arch,encoder,kwargs", [("unet", "test_efficientnet", {}),
                                                 ("dpt", "vit_tiny_patch16_224", {"depth": 4})])
def test_gradient_checkpointing_recomputes_the_encoder_and_keeps_the_gradients(arch, encoder, kwargs, monkeypatch):
    import timm.models._features as features
    import timm.models.efficientnet as effnet
    import timm.models.vision_transformer as vit

    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        net = SegNet(arch, encoder, "none", 2, [16, 16, 8, 8, 8] if arch == "unet" else [16], kwargs)
        calls = []
        for mod in (features, effnet, vit):
            real = mod.checkpoint
            monkeypatch.setattr(mod, "checkpoint", lambda f, *a, _r=real, **k: calls.append(1) or _r(f, *a, **k))
        if on:
            net.set_grad_checkpointing()
        x = torch.randn(2, 3, 64, 64)
        seg_loss(net.train()(x), torch.randint(0, 2, (2, 64, 64)), "ce").backward()
        assert bool(calls) == on  # the encoder really is recomputed (and only when asked)
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n


def test_gradient_checkpointing_is_refused_where_it_cannot_help(tmp_path):
    from histowsss.config import load_config

    with pytest.raises(Exception, match="saves nothing with train_seg.freeze_encoder"):
        load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", "train_seg.grad_checkpointing=true",
                             "train_seg.freeze_encoder=true"])
    a, b = (load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", f"train_seg.grad_checkpointing={v}"])
            for v in ("false", "true"))
    from histowsss.steps import train_seg

    assert train_seg.config_hash(a) == train_seg.config_hash(b)  # the same gradients: the same network


@pytest.mark.parametrize("arch,encoder,kwargs", [("unet", "test_efficientnet", {}),
                                                 ("dpt", "vit_small_patch14_reg4_dinov2",
                                                  {"embed_dim": 48, "num_heads": 2, "depth": 4})])
def test_an_ensemble_on_one_frozen_encoder_holds_and_runs_it_once(arch, encoder, kwargs, tmp_path):
    """Members trained on one frozen pretrained encoder carry identical encoders: the ensemble keeps one and runs it
    once per input, with the same averaged probabilities; members with encoders of their own keep them."""
    from safetensors.torch import save_file

    from histowsss.models.segnet import SegEnsemble, SharedEncoder

    def member(seed: int) -> SegNet:
        torch.manual_seed(seed)  # the decoders differ, the encoders are the file's
        return SegNet(arch, encoder, str(path), 2, [16, 16, 8, 8, 8] if arch == "unet" else [16], kwargs,
                      mean=(0.5,) * 3, std=(0.2,) * 3).freeze_encoder().eval()

    torch.manual_seed(0)
    path = tmp_path / "enc.safetensors"
    donor = SegNet(arch, encoder, "none", 2, [16, 16, 8, 8, 8] if arch == "unet" else [16], kwargs,
                   prune_unread=False).net.encoder.model
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    members = [member(s) for s in (1, 2, 3)]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0).log()
        calls = []
        members[0].net.encoder.register_forward_hook(lambda *a: calls.append(1))
        ens = SegEnsemble(members).eval()
        assert isinstance(ens.shared, SharedEncoder) and all(m.net.encoder is ens.shared for m in ens.members)
        assert torch.allclose(ens(x), expected, atol=1e-5)
        assert len(calls) == 1  # one encoder pass for three members
        assert torch.allclose(ens(x * 0.5), SegEnsemble([member(s) for s in (1, 2, 3)])(x * 0.5), atol=1e-5)
        assert len(calls) == 2
        n_params = sum(p.numel() for p in ens.parameters())  # (parameters() lists a shared tensor once)
        assert n_params < sum(p.numel() for m in (member(1), member(2), member(3)) for p in m.parameters())
        fine_tuned = [member(s) for s in (1, 2)]
        with torch.no_grad():
            next(fine_tuned[1].net.encoder.parameters()).add_(1e-3)
        assert SegEnsemble(fine_tuned).shared is None  # encoders of their own: each kept and run
