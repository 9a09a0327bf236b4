"""The final segmentation network: a segmentation-models-pytorch U-Net / DeepLabV3+ on a timm encoder.

smp's "timm universal" encoder (``encoder_name="tu-<timm name>"``) wraps ``timm.create_model(...,
features_only=True)`` as ``net.encoder.model``; its state-dict keys are timm's (``conv_stem.weight``,
``blocks.0.0...``) without the classifier head. smp is always built with ``encoder_weights=None`` (its default
downloads); ImageNet weights then come from the offline packages of :mod:`histowsss.models.weights`, loaded into
``net.encoder.model`` with :func:`load_into` (by name, or by order for the lukemelas-layout lite0 files).

Also here: :class:`SegEnsemble` (a seed ensemble's averaged probabilities) and the pseudo-label-noise-robust
losses (:func:`seg_loss`), see docs/segmentation.md.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from histowsss.models.weights import PACKAGED_WEIGHTS, WeightsError, load_into, packaged_weights_path, read_state_dict

IGNORE = 255
ARCHITECTURES = {"unet": "Unet", "deeplabv3plus": "DeepLabV3Plus", "dpt": "DPT"}
VIT_GRID = 16  # a dpt encoder's token grid in input pixels, whatever its patch size (as the CAM backbone's)


class SegNet(nn.Module):
    """smp network + the normalisation its encoder weights expect; ``forward`` returns logits (B, C, H, W).

    Inputs must have sides divisible by ``size_divisor`` (32 for U-Net and DPT, 16 for DeepLabV3+). A DPT encoder of
    patch size p != 16 sees the input resized by p / 16 (one token per 16 input pixels, an even token grid, as the
    DPT decoder needs), under a decoder built for that 16-px grid, so its logits come out at the input's size.
    """

    def __init__(self, architecture: str, encoder: str, encoder_weights: str, num_classes: int,
                 decoder_channels: list[int] | None = None, model_kwargs: dict | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 prune_unread: bool = True):
        """``prune_unread=False``: keep a DPT encoder's final norm and head (:meth:`prune_unread`), e.g. to check a
        weights file against the model as it is when the file is loaded."""
        super().__init__()
        import segmentation_models_pytorch as smp

        from histowsss.models.backbone import timm_kwargs

        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        kwargs: dict = timm_kwargs(model_kwargs or {}, "train_seg.encoder_model_kwargs")
        _check_not_smp_arguments(getattr(smp, ARCHITECTURES[architecture]), kwargs)
        kwargs.update(_decoder_kwargs(architecture, decoder_channels))
        vit_depth = None
        if architecture == "dpt":
            _check_vit_name(encoder)
            # smp's DPT encoder takes `depth` (its number of feature levels) itself: the ViT's goes to timm directly
            vit_depth = kwargs.pop("depth", None)
            kwargs.update(dynamic_img_size=True, num_classes=0)  # (timm's arguments, passed on by smp)
        try:
            with warnings.catch_warnings(), _timm_depth(vit_depth):
                warnings.filterwarnings("ignore", message=".*decoder_readout.*")  # a ViT without a class token
                self.net = getattr(smp, ARCHITECTURES[architecture])(
                    encoder_name=f"tu-{encoder}", encoder_weights=None, classes=num_classes, **kwargs)
        except (RuntimeError, KeyError, ValueError, TypeError, AssertionError) as e:
            hint = (" (a vision transformer: set train_seg.architecture: dpt)"
                    if architecture != "dpt" and "downsampling pattern" in str(e) else "")
            raise WeightsError(f"smp cannot build {architecture} on timm encoder {encoder!r}: {e}{hint}") from None
        self.architecture, self.encoder_name, self.num_classes = architecture, encoder, num_classes
        self.patch = VIT_GRID
        if architecture == "dpt":
            self.patch = _check_vit_encoder(self.net, encoder)
            if self.patch != VIT_GRID:
                _decoder_for_grid(self.net, kwargs)
        if architecture == "dpt" and encoder_weights not in ("none", "imagenet") and (mean is None or std is None):
            raise WeightsError(f"{encoder_weights}: set train_seg.encoder_mean and train_seg.encoder_std to the "
                               "normalisation these weights were trained with (their model card; UNI: mean [0.485, "
                               f"0.456, 0.406], std [0.229, 0.224, 0.225]); timm's default for {encoder} need not be it")
        self.mean, self.std = load_encoder_weights(self.net.encoder.model, encoder, encoder_weights)
        self.mean, self.std = tuple(mean or self.mean), tuple(std or self.std)
        if prune_unread:
            self.prune_unread()
        self.size_divisor = 16 if architecture == "deeplabv3plus" else 32
        self.encoder_frozen = False

    def prune_unread(self) -> None:
        """Remove a DPT encoder's final norm and head, which DPT never reads (DDP would find them unused)."""
        if self.architecture == "dpt":
            self.net.encoder.model.prune_intermediate_layers(self.net.encoder._output_indices, prune_norm=True,
                                                             prune_head=True)

    def freeze_encoder(self) -> "SegNet":
        """Keep the encoder as loaded: no gradients, and its normalisation layers in eval mode while training."""
        self.encoder_frozen = True
        for p in self.net.encoder.parameters():
            p.requires_grad_(False)
        self.net.encoder.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> "SegNet":
        """Recompute the encoder's activations in the backward pass instead of keeping them (timm's gradient
        checkpointing: less training memory for a deep encoder, a ViT-L say, at the cost of a second forward through
        it; the gradients are the same). Raises ValueError for an encoder timm cannot checkpoint."""
        model = self.net.encoder.model
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"timm encoder {self.encoder_name!r} ({type(model).__name__}) has no gradient "
                             "checkpointing; set train_seg.grad_checkpointing=false")
        model.set_grad_checkpointing(enable)
        return self

    def train(self, mode: bool = True) -> "SegNet":
        super().train(mode)
        if self.encoder_frozen:
            self.net.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.architecture == "dpt" and (x.shape[2] % self.size_divisor or x.shape[3] % self.size_divisor):
            raise ValueError(f"a dpt network takes inputs whose sides are multiples of {self.size_divisor} px, got "
                             f"{x.shape[3]}x{x.shape[2]} (pad the input; crops and tiles are such multiples)")
        if self.patch == VIT_GRID:
            return self.net(x)
        # one token per 16 input pixels: the decoder (built for a 16-px grid) gives logits at the input's size
        h, w = x.shape[2:]
        return self.net(F.interpolate(x, size=(h // VIT_GRID * self.patch, w // VIT_GRID * self.patch),
                                      mode="bilinear", align_corners=False, antialias=self.patch < VIT_GRID))

    def param_groups(self, lr: float, encoder_lr_mult: float) -> list[dict]:
        """Encoder at ``lr * encoder_lr_mult``, decoder and head at ``lr`` (a frozen encoder: the decoder's only)."""
        enc = [p for p in self.net.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in self.net.encoder.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return ([{"params": enc, "lr": lr * encoder_lr_mult}] if enc else []) + [{"params": rest, "lr": lr}]


def _check_not_smp_arguments(smp_class, kwargs: dict) -> None:
    """``encoder_model_kwargs`` are timm's: a name smp's network takes itself (``activation``, ``aux_params``,
    ``decoder_*``, ...) would change the network, not the encoder, so it is refused."""
    import inspect

    own = sorted(set(kwargs) & set(inspect.signature(smp_class.__init__).parameters))
    if own:
        raise WeightsError(f"train_seg.encoder_model_kwargs {own}: arguments of smp's {smp_class.__name__} itself, "
                           "not of the timm encoder; remove them (decoder widths: train_seg.decoder_channels)")


def _decoder_kwargs(architecture: str, decoder_channels: list[int] | None) -> dict:
    """smp's decoder-width arguments from ``train_seg.decoder_channels``."""
    if not decoder_channels:
        return {}
    if architecture == "unet":
        if len(decoder_channels) != 5:
            raise ValueError(f"train_seg.decoder_channels for unet needs 5 values, got {decoder_channels}")
        return {"decoder_channels": tuple(decoder_channels)}
    if architecture == "dpt":
        if len(decoder_channels) not in (1, 5):
            raise ValueError("train_seg.decoder_channels for dpt needs 1 value (the fusion width) or 5 (four "
                             f"reassemble widths, then the fusion width), got {decoder_channels}")
        return {"decoder_fusion_channels": int(decoder_channels[-1]),
                **({"decoder_intermediate_channels": tuple(decoder_channels[:4])} if len(decoder_channels) == 5 else {})}
    return {"decoder_channels": int(decoder_channels[0])}


def _check_vit_name(encoder: str) -> None:
    """A dpt encoder must be one of timm's VisionTransformer models: said before anything is built (a CNN's own
    error would name an argument it does not take)."""
    import timm

    if timm.models.is_model(encoder):
        module = timm.models.model_entrypoint(encoder).__module__.rsplit(".", 1)[-1]
        if module != "vision_transformer":
            raise WeightsError(f"train_seg.architecture dpt needs a vision transformer encoder (timm's "
                               f"VisionTransformer, e.g. vit_base_patch16_224), and {encoder} is a timm {module} model "
                               "(other transformer families, e.g. EVA, are not supported; a CNN goes with unet or "
                               "deeplabv3plus)")


@contextlib.contextmanager
def _timm_depth(depth: int | None):
    """While smp builds its DPT encoder, give timm.create_model the ViT's ``depth`` (a model card's, e.g. UNI2-h's
    24 blocks of a giant ViT; no timm name has that shape), which smp's encoder cannot pass on: it takes ``depth``
    as its own argument."""
    if depth is None:
        yield
        return
    from segmentation_models_pytorch.encoders import timm_vit

    real = timm_vit.timm

    class _WithDepth:
        def __getattr__(self, name: str):
            return getattr(real, name)

        @staticmethod
        def create_model(name: str, **kw):
            return real.create_model(name, depth=depth, **kw)

    timm_vit.timm = _WithDepth()
    try:
        yield
    finally:
        timm_vit.timm = real


def _check_vit_encoder(net: nn.Module, encoder: str) -> int:
    """The patch size of a DPT's encoder, which must be timm's VisionTransformer with square patches."""
    from timm.models.vision_transformer import VisionTransformer

    model = net.encoder.model
    if not isinstance(model, VisionTransformer):
        raise WeightsError(f"train_seg.architecture dpt needs a vision transformer encoder (timm's VisionTransformer, "
                           f"e.g. vit_base_patch16_224), and {encoder} builds {type(model).__name__} (other "
                           "transformer families, e.g. EVA, are not supported; a CNN goes with unet or deeplabv3plus)")
    if getattr(model, "dist_token", None) is not None or model.pos_embed is None:
        raise WeightsError(f"{encoder}: distilled vision transformers and ones without an absolute position embedding "
                           "are not supported as the dpt encoder")
    ph, pw = model.patch_embed.patch_size
    if ph != pw:
        raise WeightsError(f"{encoder}: non-square patches {ph}x{pw} are not supported")
    return ph


def _decoder_for_grid(net: nn.Module, kwargs: dict) -> None:
    """Rebuild a DPT's decoder for tokens of 16 input pixels (smp's is built for the patch size, e.g. 14, whose
    upsampling factors 3.5, 1.75 ... no layer can take): the input is resized so that one patch covers 16 pixels."""
    from segmentation_models_pytorch.base import initialization
    from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder

    enc = net.encoder
    net.decoder = DPTDecoder(encoder_out_channels=enc.out_channels, encoder_output_strides=[VIT_GRID] * len(
        enc.out_channels), encoder_has_prefix_tokens=enc.has_prefix_tokens,
        intermediate_channels=kwargs.get("decoder_intermediate_channels", (256, 512, 1024, 1024)),
        fusion_channels=kwargs.get("decoder_fusion_channels", 256))
    initialization.initialize_decoder(net.decoder)


class SegEnsemble(nn.Module):
    """Networks of one architecture whose class probabilities are averaged (a seed ensemble, ``train_seg.members``).

    ``forward`` returns the log of the members' mean softmax, so the softmax that inference applies to "logits"
    gives exactly the averaged probabilities (and their argmax the ensemble's prediction).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("SegEnsemble needs at least one member")
        first = members[0]
        norms = {(tuple(m.mean), tuple(m.std)) for m in members}
        if len(norms) != 1:
            raise ValueError(f"ensemble members expect different input normalisations: {sorted(norms)}")
        self.shared = _share_identical_encoders(members)
        self.members = nn.ModuleList(members)
        self.mean, self.std = first.mean, first.std
        self.size_divisor = math.lcm(*(int(m.size_divisor) for m in members))
        self.num_classes = first.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.shared.once() if self.shared is not None else contextlib.nullcontext():
            probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


class SharedEncoder(nn.Module):
    """One encoder in place of several identical ones (the members of an ensemble trained on one frozen pretrained
    encoder): held once, and inside :meth:`once` run once per input, its output handed to every member."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self._cache: list | None = None

    @contextlib.contextmanager
    def once(self):
        """Within this block, an input equal to the one before gets that input's output (not computed again)."""
        self._cache = []
        try:
            yield
        finally:
            self._cache = None

    def forward(self, x: torch.Tensor):
        if self._cache is None:
            return self.encoder(x)
        if self._cache and self._cache[0].shape == x.shape and torch.equal(self._cache[0], x):
            return self._cache[1]
        out = self.encoder(x)
        self._cache[:] = [x, out]
        return out

    def __getattr__(self, name: str):  # smp reads the encoder's attributes (out_channels, output_stride ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("encoder"), name)


def _share_identical_encoders(members: list[nn.Module]) -> SharedEncoder | None:
    """When every member is a SegNet whose encoder holds the same tensors as the first's (an ensemble on one frozen
    pretrained encoder: a ViT-L is 1.2 GB), put one :class:`SharedEncoder` in all of them; None otherwise."""
    if len(members) < 2 or not all(isinstance(m, SegNet) for m in members):
        return None
    encoders = [m.net.encoder for m in members]
    if any(isinstance(e, SharedEncoder) for e in encoders):
        return None
    ref = encoders[0].state_dict()
    for e in encoders[1:]:
        sd = e.state_dict()
        if sd.keys() != ref.keys() or any(sd[k].shape != ref[k].shape or not torch.equal(sd[k], ref[k])
                                          for k in ref):
            return None
    shared = SharedEncoder(encoders[0])
    for m in members:
        m.net.encoder = shared
    return shared


def load_encoder_weights(model: nn.Module, encoder: str, weights: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Load 'imagenet' (offline package), 'none' or a local file into smp's timm encoder; returns (mean, std)."""
    if weights == "none":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if weights == "imagenet":
        path = packaged_weights_path(encoder, "train_seg.encoder_weights")
        load_into(model, read_state_dict(path), str(path))
        spec = PACKAGED_WEIGHTS[encoder]
        return spec.mean, spec.std
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsError(f"{weights}: train_seg.encoder_weights not found (a relative path is read from the current "
                           f"folder, {Path.cwd()}); train_seg builds the network from it (eval_seg and predict do "
                           "not need it)")
    load_into(model, read_state_dict(path), weights, "train_seg.encoder_model_kwargs")
    pc = getattr(model, "pretrained_cfg", None) or {}
    return tuple(pc.get("mean", (0.485, 0.456, 0.406))), tuple(pc.get("std", (0.229, 0.224, 0.225)))


def check_segnet(train_seg, num_classes: int) -> None:
    """Build the network ``train_seg`` describes on the meta device (no memory, no weights) and check that its
    encoder weights file fits it: the WeightsError / ValueError train_seg would raise, before the steps ahead of it
    run (``histowsss run`` calls this when it plans train_seg)."""
    with torch.device("meta"):  # as the file meets it: before the unread layers are pruned
        net = SegNet(train_seg.architecture, train_seg.encoder, "none", num_classes, train_seg.decoder_channels,
                     train_seg.encoder_model_kwargs, train_seg.encoder_mean, train_seg.encoder_std, prune_unread=False)
    w = train_seg.encoder_weights
    if w not in ("imagenet", "none"):
        load_into(net.net.encoder.model, read_state_dict(Path(w).expanduser(), shapes_only=True), w,
                  "train_seg.encoder_model_kwargs", check_only=True)


def build_segnet(train_seg, num_classes: int) -> SegNet:
    """A SegNet from a :class:`histowsss.config.TrainSegConfig`."""
    return SegNet(train_seg.architecture, train_seg.encoder, train_seg.encoder_weights, num_classes,
                  train_seg.decoder_channels, train_seg.encoder_model_kwargs, train_seg.encoder_mean,
                  train_seg.encoder_std)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", q: float = 0.7,
             ignore_index: int = IGNORE) -> torch.Tensor:
    """Pixel loss over non-ignored pixels of (B, C, H, W) logits and (B, H, W) int64 targets.

    * ``ce``: cross-entropy.
    * ``oeem``: online easy-example mining (Li et al., MICCAI 2022, for gland pseudo-masks): each pixel's CE is
      weighted by the network's own (detached) probability of its pseudo-label, normalised to mean 1 within each
      pseudo-class of the batch. Confident ("easy") pixels, which are mostly correct pseudo-labels, dominate;
      the per-class normalisation keeps every class's total weight, so a class is not down-weighted as a whole.
    * ``gce``: generalised cross-entropy (Zhang & Sabuncu 2018), ``(1 - p^q) / q``: between CE (q -> 0) and MAE
      (q = 1), bounded, so confidently wrong labels cannot dominate the gradient.
    """
    valid = target != ignore_index
    n = valid.sum()
    if n == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    safe = torch.where(valid, target, torch.zeros_like(target))
    if kind == "ce":
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    logp = F.log_softmax(logits, dim=1).gather(1, safe[:, None])[:, 0]
    if kind == "gce":
        loss = (1.0 - torch.exp(q * logp)) / q
        return loss[valid].mean()
    if kind == "oeem":
        ce = -logp
        with torch.no_grad():
            p = logp.exp()
            w = torch.zeros_like(p)
            for c in torch.unique(safe[valid]):
                m = valid & (safe == c)
                w[m] = p[m] / p[m].mean().clamp_min(1e-6)
        return (ce * w)[valid].sum() / n
    raise ValueError(f"unknown loss {kind!r}; choose oeem, gce or ce")
