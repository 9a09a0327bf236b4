"""Exports of predictions for other tools (QuPath GeoJSON)."""

from histowsss.export.geojson import feature_collection, hex_to_rgb, labels_to_features, region_polygons

__all__ = ["feature_collection", "hex_to_rgb", "labels_to_features", "region_polygons"]
