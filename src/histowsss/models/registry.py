"""A registry of named, swappable CAM networks (like timm's model registry)."""

from __future__ import annotations

from typing import Callable

from torch import nn

_CAM_NETWORKS: dict[str, Callable[..., nn.Module]] = {}


def register_cam_network(name: str) -> Callable[[type], type]:
    """Class decorator: make a CAM network selectable as ``train_cam.network: NAME``."""

    def deco(cls: type) -> type:
        _CAM_NETWORKS[name] = cls
        return cls

    return deco


def create_cam_network(name: str, **kwargs) -> nn.Module:
    """Build a registered CAM network by name."""
    from histowsss.models import cam  # noqa: F401  (registers "cam")

    try:
        from histowsss.models import rpnet  # noqa: F401  (registers "rpnet")
    except ImportError:
        pass
    if name not in _CAM_NETWORKS:
        raise KeyError(f"unknown CAM network {name!r}; available: {', '.join(sorted(_CAM_NETWORKS))}")
    return _CAM_NETWORKS[name](**kwargs)


def cam_network_names() -> list[str]:
    return sorted(_CAM_NETWORKS)
