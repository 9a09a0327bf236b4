"""Data layer: manifests, image reading, masks, splits, patches, transforms, synthetic data."""
