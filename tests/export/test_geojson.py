"""QuPath GeoJSON export: schema, holes, level-0 coordinates, one feature per region per class."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import shape

from histowsss.export.geojson import feature_collection, hex_to_rgb, labels_to_features, region_polygons

NAMES = ["background", "gland", "tumour"]
COLORS = ["#000000", "#e6194b", "#3cb44b"]


def ring_map() -> np.ndarray:
    lab = np.zeros((40, 50), np.uint8)
    lab[5:25, 5:25] = 1          # a ring: 20 x 20 square with an 8 x 8 hole
    lab[11:19, 11:19] = 0
    lab[30:36, 30:45] = 1        # a second gland region
    lab[2:8, 40:48] = 2          # a tumour region
    return lab


def test_feature_collection_schema_for_qupath():
    fc = feature_collection(labels_to_features(ring_map(), NAMES, COLORS, background=0, simplify=0))
    fc = json.loads(json.dumps(fc))  # plain JSON types only
    assert fc["type"] == "FeatureCollection"
    assert len(fc["features"]) == 3  # one per connected region per non-background class, none for background
    for f in fc["features"]:
        assert f["type"] == "Feature" and isinstance(f["id"], str)
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = f["properties"]
        assert props["objectType"] == "annotation"  # inside properties, where QuPath reads it
        cls = props["classification"]
        assert cls["name"] in ("gland", "tumour")
        assert cls["color"] == hex_to_rgb(COLORS[NAMES.index(cls["name"])])
        assert all(isinstance(v, int) for v in cls["color"]) and len(cls["color"]) == 3
        assert "objectType" not in f and "classification" not in f
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]  # closed rings
    names = sorted(f["properties"]["classification"]["name"] for f in fc["features"])
    assert names == ["gland", "gland", "tumour"]


def test_ring_shaped_region_is_a_polygon_with_a_hole():
    feats = labels_to_features(ring_map(), NAMES, COLORS, background=0, simplify=0)
    ring = max((f for f in feats if f["properties"]["classification"]["name"] == "gland"),
               key=lambda f: shape(f["geometry"]).area)
    assert ring["geometry"]["type"] == "Polygon"
    assert len(ring["geometry"]["coordinates"]) == 2  # exterior + one hole
    geom = shape(ring["geometry"])
    assert geom.is_valid
    assert geom.area == pytest.approx(20 * 20 - 8 * 8, rel=0.03)
    assert not geom.contains(shape({"type": "Point", "coordinates": [15.0, 15.0]}))  # the hole's centre
    assert geom.contains(shape({"type": "Point", "coordinates": [7.0, 15.0]}))  # on the ring (x=col, y=row)


def test_coordinates_are_level0_pixels():
    lab = np.zeros((20, 30), np.uint8)
    lab[4:10, 6:18] = 1  # rows 4..9, cols 6..17 at image_scale 0.5
    (geom,) = region_polygons(lab == 1, scale=0.5, simplify=0)
    minx, miny, maxx, maxy = geom.bounds
    # pixel (r, c) covers [c, c+1] x [r, r+1]: the region's edges are x 6..18, y 4..10, doubled at scale 0.5
    assert (minx, miny, maxx, maxy) == pytest.approx((12.0, 8.0, 36.0, 20.0))
    assert geom.area == pytest.approx(4 * 6 * 12, rel=0.1)


def test_min_area_and_simplify():
    lab = np.zeros((30, 30), np.uint8)
    lab[1, 1] = 1
    yy, xx = np.mgrid[:30, :30]
    lab[(yy - 18) ** 2 + (xx - 18) ** 2 < 64] = 1
    feats = labels_to_features(lab, NAMES, COLORS, background=0, simplify=0, min_area=4)
    assert len(feats) == 1  # the single pixel is dropped
    fine = len(feats[0]["geometry"]["coordinates"][0])
    coarse = len(labels_to_features(lab, NAMES, COLORS, background=0, simplify=1.0, min_area=4)
                 [0]["geometry"]["coordinates"][0])
    assert coarse < fine


def test_ignore_and_empty_maps():
    lab = np.full((10, 10), 255, np.uint8)
    assert labels_to_features(lab, NAMES, COLORS, background=0) == []
    assert labels_to_features(np.zeros((10, 10), np.uint8), NAMES, COLORS, background=0) == []
    with pytest.raises(ValueError, match="colour"):
        hex_to_rgb("red")


def test_regions_carry_their_class_probability():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:6, 2:6] = 1  # a confident region
    lab[10:18, 10:18] = 1  # a doubtful one
    probs = np.zeros((2, 20, 20), np.float32)
    probs[1][2:6, 2:6] = 0.9
    probs[1][10:18, 10:18] = 0.55
    probs[1][12, 12] = 0.51
    probs[0] = 1 - probs[1]
    feats = labels_to_features(lab, ["bg", "gland"], ["#00ff00", "#ff0000"], simplify=0, probs=probs)
    by_area = {f["properties"]["measurements"]["area_px"] > 30: f["properties"]["measurements"] for f in feats}
    assert len(feats) == 2
    assert by_area[False]["mean_probability"] == pytest.approx(0.9) and by_area[False]["min_probability"] == pytest.approx(0.9)
    assert by_area[True]["min_probability"] == pytest.approx(0.51)  # (2 px inside its outline)
    assert by_area[True]["mean_probability"] == pytest.approx((15 * 0.55 + 0.51) / 16, abs=1e-4)  # (its inner 4x4)
    assert all(f["properties"]["measurements"]["min_probability"] <= f["properties"]["measurements"]["mean_probability"]
               for f in feats)
    as_uint8 = labels_to_features(lab, ["bg", "gland"], ["#00ff00", "#ff0000"], simplify=0,
                                  probs=np.round(probs * 255).astype(np.uint8))
    assert {round(f["properties"]["measurements"]["mean_probability"], 2) for f in as_uint8} == {0.9, 0.55}
    with pytest.raises(ValueError, match="probs"):
        labels_to_features(lab, ["bg", "gland"], ["#00ff00", "#ff0000"], probs=probs[:, :10])


def test_slide_outputs_stop_at_the_slide_edge():
    """A slide's output grid rounds its last row and column up: polygons are cut to the slide, and the edge cells
    count only their part inside it, so a slide called one class all over has exactly the slide's area."""
    from histowsss.slides.predict import cell_areas

    cell = cell_areas((3, 4), 4, 14, 10)  # 14 x 10 level-0 px on cells of 4 px: 4 x 3 cells reach 16 x 12
    assert cell.sum() == 14 * 10 and cell[0, 0] == 16 and cell[2, 3] == 2 * 2
    labels = np.ones((3, 4), np.uint8)
    feats = labels_to_features(labels, ["bg", "gland"], ["#000000", "#ff0000"], scale=0.25, simplify=0,
                               bounds=(14, 10))
    assert len(feats) == 1
    geom = shape(feats[0]["geometry"])
    assert geom.bounds == (0, 0, 14, 10) and 130 <= geom.area <= 140  # (the outline's corner is chamfered)
    assert feats[0]["properties"]["measurements"]["area_px"] == round(geom.area, 1)
    # a region wholly past the edge is dropped
    labels = np.zeros((3, 4), np.uint8)
    labels[:, 3] = 1
    assert labels_to_features(labels, ["bg", "gland"], ["#000000", "#ff0000"], scale=0.25, simplify=0,
                              bounds=(12, 10)) == []


def test_qupath_tile_names_place_a_tiles_regions_on_the_slide():
    """QuPath's tile exporter names tiles '<slide> [d=2,x=4096,y=8192,w=512,h=512].jpg': pixel (u, v) of the tile
    is level-0 pixel (x + d u, y + d v) of the slide."""
    from pathlib import Path

    from histowsss.export.geojson import place_features, qupath_tile_placement

    assert qupath_tile_placement(Path("CMU-1 [d=2,x=4096,y=8192,w=512,h=512].jpg")) == (2.0, 4096.0, 8192.0)
    assert qupath_tile_placement(Path("a [b] [x=10, y=20, w=5, h=5].png")) == (1.0, 10.0, 20.0)
    with pytest.raises(ValueError, match="--qupath-tiles needs names"):
        qupath_tile_placement(Path("tile_001.png"))
    lab = np.zeros((8, 8), np.uint8)
    lab[2:4, 2:6] = 1
    feats = labels_to_features(lab, ["bg", "t"], ["#000000", "#ff0000"], simplify=0)
    (f,) = place_features(feats, 2.0, 100.0, 50.0)
    minx, miny, maxx, maxy = shape(f["geometry"]).bounds
    ominx, ominy, omaxx, omaxy = shape(feats[0]["geometry"]).bounds
    assert (minx, miny, maxx, maxy) == pytest.approx((100 + 2 * ominx, 50 + 2 * ominy, 100 + 2 * omaxx, 50 + 2 * omaxy))
    assert f["properties"]["measurements"]["area_px"] == pytest.approx(4 * feats[0]["properties"]["measurements"][
        "area_px"], abs=0.2)
    assert f["id"] == feats[0]["id"] and feats[0]["geometry"] != f["geometry"]


def test_region_ids_differ_between_models_and_repeat_for_the_same_one():
    from pathlib import Path

    from histowsss.export.geojson import feature_id_prefix

    p = Path("x/CMU-7 [d=2,x=0,y=0,w=9,h=9].jpg")
    lab = np.zeros((8, 8), np.uint8)
    lab[2:4, 2:6] = 1

    def ids(model: str) -> list[str]:
        return [f["id"] for f in labels_to_features(lab, ["bg", "t"], ["#000000", "#ff0000"], simplify=0,
                                                    id_prefix=feature_id_prefix(model, p))]

    assert ids("seg:aaaa") == ids("seg:aaaa") and ids("seg:aaaa") != ids("seg:bbbb")


def test_min_probability_leaves_out_the_outline_and_small_holes_are_filled():
    """Along a region's outline its class probability is near the decision point whatever the region: the minimum
    is taken 2 px inside it (over all pixels of a thinner region). A hole smaller than min_area is no hole."""
    from shapely.geometry import shape

    lab = np.zeros((30, 30), np.uint8)
    lab[5:25, 5:25] = 1
    lab[8, 8] = 0  # a one-pixel hole
    lab[14:20, 14:20] = 0  # a 36 px hole
    probs = np.zeros((2, 30, 30), np.float32)
    probs[1][lab == 1] = 0.95
    probs[1][5, 5:25] = 0.5  # the outline: doubtful everywhere
    probs[1][12, 20] = 0.7  # inside: the doubt that counts
    probs[0] = 1 - probs[1]
    (f,) = labels_to_features(lab, ["bg", "gland"], ["#00ff00", "#ff0000"], simplify=0, min_area=4, probs=probs)
    assert f["properties"]["measurements"]["min_probability"] == pytest.approx(0.7)
    assert len(shape(f["geometry"]).interiors) == 1  # the 36 px hole; the one-pixel hole filled
    (f,) = labels_to_features(lab, ["bg", "gland"], ["#00ff00", "#ff0000"], simplify=0, min_area=0, probs=probs)
    assert len(shape(f["geometry"]).interiors) == 2


def test_scale_per_axis():
    lab = np.ones((10, 20), np.uint8)
    (f,) = labels_to_features(lab, ["bg", "gland"], ["#00ff00", "#ff0000"], simplify=0, scale=(10 / 21, 20 / 39))
    from shapely.geometry import shape

    assert shape(f["geometry"]).bounds == pytest.approx((0.0, 0.0, 39.0, 21.0))
