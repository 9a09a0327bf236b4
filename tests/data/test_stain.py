"""Stain normalisation: Reinhard reaches the reference statistics, Macenko recovers the stains an image was mixed
from and maps them to the reference's; flat or blank images keep their colour; references are measured and checked."""

from __future__ import annotations

import numpy as np

import pytest

from histowsss.data.stain import (DEFAULT_REFERENCE, MACENKO_REFERENCE, LIGHT, lab_stats, macenko, macenko_stains,
                                  measure_reference, reinhard, stain_normalizer)

# haematoxylin and eosin optical-density directions unlike the reference's (a bluer H, a pinker E)
H = np.array([0.65, 0.70, 0.30])
E = np.array([0.07, 0.99, 0.12])


def mixed(h_conc: np.ndarray, e_conc: np.ndarray, he=(H, E)) -> np.ndarray:
    """An RGB uint8 image mixed from two stains by Beer-Lambert (the model Macenko's method inverts)."""
    hv, ev = (v / np.linalg.norm(v) for v in he)
    od = h_conc[..., None] * hv + e_conc[..., None] * ev
    return np.clip(np.round(LIGHT * np.exp(-od) - 1), 0, 255).astype(np.uint8)


def tissue(seed: int = 0, n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentrations of a tile: nuclei (H-rich), stroma (E-rich), glass, and mixtures."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.0, 0.4, (n, n))
    e = rng.uniform(0.2, 0.9, (n, n))
    h[: n // 3] += rng.uniform(0.5, 1.5, (n // 3, n))  # nuclei
    e[n // 3 : 2 * n // 3] += rng.uniform(0.3, 0.8, (n // 3, n))
    h[-8:], e[-8:] = 0.0, 0.0  # glass
    return h, e


def test_an_h_and_e_like_image_reaches_the_reference_statistics():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal((180, 110, 170), (25, 30, 20), (64, 64, 3)), 0, 255).astype(np.uint8)
    mean, std = lab_stats(reinhard(img))
    np.testing.assert_allclose(mean, DEFAULT_REFERENCE[0], atol=2.5)
    np.testing.assert_allclose(std, DEFAULT_REFERENCE[1], rtol=0.2)


def test_a_nearly_uniform_tile_is_not_stretched_into_garish_colours():
    """A pale tile with one pixel a level brighter: no pixel's colour may jump by more than the shift of the mean."""
    img = np.full((64, 64, 3), (200, 160, 190), np.uint8)
    img[5, 5] = (201, 160, 190)
    out = reinhard(img).astype(int)
    spread = np.abs(out - out[0, 0]).max()
    assert spread <= 20, spread


def test_macenko_finds_the_stains_an_image_was_mixed_from():
    st = macenko_stains(mixed(*tissue()))
    cos_h = st[0, :3] @ H / np.linalg.norm(H)
    cos_e = st[1, :3] @ E / np.linalg.norm(E)
    assert cos_h > 0.99 and cos_e > 0.99, st  # haematoxylin first, eosin second
    np.testing.assert_allclose(np.linalg.norm(st[:, :3], axis=1), 1.0, atol=1e-6)


def test_macenko_maps_an_image_onto_the_reference_stains():
    """Unmixing with the image's stains and mixing with the reference's gives the image the reference stains would
    have made from the same (scaled) concentrations."""
    h, e = tissue(1)
    img = mixed(h, e)
    st = macenko_stains(img)
    ref = np.asarray(MACENKO_REFERENCE)
    scale = ref[:, 3] / st[:, 3]
    expected = mixed(h * scale[0], e * scale[1], he=(ref[0, :3], ref[1, :3])).astype(int)
    out = macenko(img).astype(int)
    assert np.abs(out - expected).mean() < 3.0, np.abs(out - expected).mean()
    # a differently stained copy of the same tissue lands on nearly the same colours
    copy = mixed(h * 0.8, e * 1.3, he=(np.array([0.45, 0.85, 0.30]), np.array([0.25, 0.90, 0.35])))
    before = np.abs(copy.astype(int) - img.astype(int)).mean()
    after = np.abs(macenko(copy).astype(int) - out).mean()
    assert after < before / 4, (before, after)


def test_macenko_leaves_glass_and_blank_tiles_as_they_are():
    blank = np.full((32, 32, 3), 238, np.uint8)
    blank[3, 3] = (120, 60, 150)  # one stained pixel is no tissue
    assert macenko_stains(blank) is None
    np.testing.assert_array_equal(macenko(blank), blank)


def test_a_given_source_maps_every_tile_of_a_slide_alike():
    """With the slide's stains as the source, a pixel's colour maps to the same colour in any tile, whatever the
    tile holds (with each tile's own estimate it would not)."""
    h, e = tissue(2)
    slide = mixed(h, e)
    source = macenko_stains(slide)
    nuclei, stroma = slide[:32], slide[32:64]
    f = stain_normalizer("macenko", source=source)
    a, b = f(nuclei), f(stroma)
    pixel = nuclei[5, 5]
    b_in = stroma.copy()
    b_in[0, 0] = pixel
    np.testing.assert_array_equal(f(b_in)[0, 0], a[5, 5])
    np.testing.assert_array_equal(np.concatenate([a, b]), f(slide[:64]))


def test_measured_references_recover_the_stains_and_the_statistics():
    imgs = [mixed(*tissue(s)) for s in range(3)]
    ref = np.asarray(measure_reference("macenko", imgs + [np.full((16, 16, 3), 240, np.uint8)]))  # glass skipped
    assert ref.shape == (2, 4)
    assert ref[0, :3] @ H / np.linalg.norm(H) > 0.99 and ref[1, :3] @ E / np.linalg.norm(E) > 0.99
    r = measure_reference("reinhard", imgs)
    np.testing.assert_allclose(r[0], np.mean([lab_stats(i)[0] for i in imgs], axis=0), atol=0.01)
    with pytest.raises(ValueError, match="stained pixels"):
        measure_reference("macenko", [np.full((16, 16, 3), 240, np.uint8)])


@pytest.mark.parametrize("method,ref,fragment", [
    ("reinhard", [[61, 40, -26]], r"\[\[L, a, b\] mean"),
    ("reinhard", [[61, 40, -26], [14, 0, 9]], "positive std"),
    ("macenko", [[0.6, 0.7, 0.3], [0.1, 0.9, 0.2]], r"\[\[r, g, b, c\]"),
    ("macenko", [[0.6, 0.7, 0.3, 0.0], [0.1, 0.9, 0.2, 1.0]], "positive"),
])
def test_a_stain_reference_of_the_wrong_shape_is_refused_with_the_fix(data_config, tmp_path, method, ref, fragment):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=fragment) as e:
        data_config(tmp_path / "m.csv", stain_normalization=method, stain_reference=ref)
    assert "histowsss data stain-reference" in str(e.value)
    data_config(tmp_path / "m.csv", stain_normalization="none", stain_reference=ref)  # unused: accepted


def test_load_image_applies_the_configured_normalisation(builder, data_config):
    from PIL import Image

    from histowsss.data.loading import load_image

    img = mixed(*tissue(3, n=48))
    Image.fromarray(img).save(builder.root / "images" / "t.png")
    m = builder.manifest([{"image": "images/t.png", "split": "train", "patient": "p", "label": "benign"}])
    for method, fn in (("macenko", macenko), ("reinhard", reinhard)):
        got = load_image(builder.root / "images" / "t.png", data_config(m, stain_normalization=method))
        np.testing.assert_array_equal(got, fn(img))
    np.testing.assert_array_equal(load_image(builder.root / "images" / "t.png", data_config(m)), img)
