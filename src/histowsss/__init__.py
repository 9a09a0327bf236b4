"""histowsss: weakly supervised segmentation of H&E histopathology images."""

__version__ = "0.1.0"
