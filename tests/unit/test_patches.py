"""Candidate -> patches: recipes, determinism, padding, validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cad.aift import Box, extract_patches, parse_recipe, validate_box
from cad.aift.patches import PatchBuffers, extract_many, resample_region
from cad.errors import InvalidInput


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)


def test_recipe_patch_counts() -> None:
    assert parse_recipe("polyp").count == 24
    assert parse_recipe("single").count == 1
    assert parse_recipe("frame").count == 8
    assert parse_recipe("polyp:8").count == 8
    assert parse_recipe("frame:1").count == 1
    assert parse_recipe("", default="single").name == "single"
    assert parse_recipe("polyp:24").spec == "polyp"


@pytest.mark.parametrize("spec", ["nope", "polyp:0", "polyp:25", "polyp:x", "single:2", ":3"])
def test_bad_recipes_are_invalid_input(spec: str) -> None:
    with pytest.raises(InvalidInput):
        parse_recipe(spec)


def test_single_patch_of_an_aligned_box_is_the_exact_crop(image: np.ndarray) -> None:
    patch = extract_patches(image, Box(10, 20, 32, 32), parse_recipe("single"), 32)
    assert patch.shape == (1, 3, 32, 32) and patch.dtype == np.float32
    np.testing.assert_array_equal(
        patch[0].transpose(1, 2, 0), image[20:52, 10:42].astype(np.float32)
    )


def test_patches_are_deterministic(image: np.ndarray) -> None:
    box = Box(40.5, 30.25, 37, 29)
    for spec in ("polyp", "frame", "single"):
        a = extract_patches(image, box, parse_recipe(spec), 48)
        b = extract_patches(image.copy(), box, parse_recipe(spec), 48)
        np.testing.assert_array_equal(a, b)


def test_polyp_recipe_scales_translates_and_rotates(image: np.ndarray) -> None:
    recipe = parse_recipe("polyp")
    patches = extract_patches(image, Box(60, 40, 30, 30), recipe, 30)
    assert patches.shape == (24, 3, 30, 30)
    # Dihedral-major order: patches 0..2 are the three scales, untransformed.
    base = [patches[s].transpose(1, 2, 0) for s in range(3)]
    assert not np.array_equal(base[0], base[1]) and not np.array_equal(base[1], base[2])
    # Variant d of scale s is a rotation/mirror of variant 0 of scale s.
    for d in range(8):
        for s in range(3):
            p = patches[d * 3 + s].transpose(1, 2, 0)
            src = base[s] if d < 4 else base[s][:, ::-1]
            np.testing.assert_array_equal(p, np.rot90(src, d % 4))
    # The 1.0 scale is translated by 10% of the box (3 px) in x and in y: not the plain crop.
    plain = extract_patches(image, Box(60, 40, 30, 30), parse_recipe("single"), 30)[0]
    shifted = [
        image[40 + dy : 70 + dy, 60 + dx : 90 + dx].astype(np.float32).transpose(2, 0, 1)
        for dy in (-3, 3)
        for dx in (-3, 3)
    ]
    assert not np.array_equal(patches[0], plain)
    assert any(np.array_equal(patches[0], s) for s in shifted)


def test_prefix_of_polyp_spans_all_scales(image: np.ndarray) -> None:
    full = extract_patches(image, Box(60, 40, 30, 30), parse_recipe("polyp"), 24)
    prefix = extract_patches(image, Box(60, 40, 30, 30), parse_recipe("polyp:3"), 24)
    np.testing.assert_array_equal(prefix, full[:3])


@pytest.mark.parametrize("name,limits", [("polyp", (1, 2, 3, 4, 8, 23)), ("frame", (1, 2, 5, 7))])
def test_every_prefix_equals_the_full_recipes_first_patches(
    image: np.ndarray, name: str, limits: tuple[int, ...]
) -> None:
    """Only the regions a kept patch comes from are resampled; the kept patches are unchanged."""
    box = Box(30, 20, 70, 60)
    full = extract_patches(image, box, parse_recipe(name), 20)
    for m in limits:
        np.testing.assert_array_equal(
            extract_patches(image, box, parse_recipe(f"{name}:{m}"), 20), full[:m]
        )


def test_pixels_beyond_the_image_are_zero_padded(image: np.ndarray) -> None:
    patch = extract_patches(image, Box(-16, -16, 32, 32), parse_recipe("single"), 32)[0]
    assert np.all(patch[:, :16, :] == 0) and np.all(patch[:, :, :16] == 0)
    np.testing.assert_array_equal(patch[:, 16:, 16:].transpose(1, 2, 0), image[:16, :16])


def test_frame_recipe_starts_with_the_whole_box(image: np.ndarray) -> None:
    patches = extract_patches(image, Box(0, 0, 160, 120), parse_recipe("frame"), 40)
    whole = extract_patches(image, Box(0, 0, 160, 120), parse_recipe("single"), 40)
    np.testing.assert_array_equal(patches[0], whole[0])
    assert len({p.tobytes() for p in patches}) == 8


def test_extract_many_concatenates_in_candidate_order(image: np.ndarray) -> None:
    boxes = [Box(10, 10, 20, 20), Box(50, 50, 30, 20)]
    recipe = parse_recipe("polyp:4")
    many = extract_many(image, boxes, recipe, 16)
    assert many.shape == (8, 3, 16, 16)
    np.testing.assert_array_equal(many[4:], extract_patches(image, boxes[1], recipe, 16))
    np.testing.assert_array_equal(many[:4], extract_patches(image, boxes[0], recipe, 16))
    assert extract_many(image, [], recipe, 16).shape == (0, 3, 16, 16)


def test_patches_written_into_a_given_array_or_refused_with_the_wrong_shape(
    image: np.ndarray,
) -> None:
    recipe = parse_recipe("polyp:4")
    out = np.full((4, 3, 16, 16), -1.0, dtype=np.float32)
    assert extract_patches(image, Box(10, 10, 20, 20), recipe, 16, out=out) is out
    np.testing.assert_array_equal(out, extract_patches(image, Box(10, 10, 20, 20), recipe, 16))
    with pytest.raises(ValueError, match="out must be"):
        extract_patches(
            image, Box(10, 10, 20, 20), recipe, 16, out=np.empty((3, 3, 16, 16), np.float32)
        )


def naive_resample(
    image: np.ndarray, cx: float, cy: float, w: float, h: float, size: int
) -> np.ndarray:
    """Bilinear sampling written out pixel by pixel (float64), zero outside: the reference."""
    out = np.zeros((3, size, size))
    height, width = image.shape[:2]
    for i in range(size):
        y = cy - h / 2 + (i + 0.5) * h / size - 0.5
        for j in range(size):
            x = cx - w / 2 + (j + 0.5) * w / size - 0.5
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < height and 0 <= xx < width:
                        out[:, i, j] += wy * wx * image[yy, xx]
    return out


@pytest.mark.parametrize(
    "region",
    [
        (40.3, 30.7, 25.0, 18.5),
        (80.0, 60.0, 160.0, 120.0),
        (5.0, 110.0, 60.0, 33.0),
        (150.0, 3.0, 9.0, 70.0),
    ],
)
def test_resampling_is_bilinear_with_zero_padding_channel_first(image: np.ndarray, region) -> None:
    patch = resample_region(image, *region, 21)
    assert patch.shape == (3, 21, 21) and patch.dtype == np.float32
    np.testing.assert_allclose(patch, naive_resample(image, *region, 21), rtol=1e-5, atol=1e-3)


def test_patch_buffers_are_reused_per_thread_and_never_shared(image: np.ndarray) -> None:
    buffers = PatchBuffers(max_patches=48)
    first = buffers.get(48, 16)
    again = buffers.get(24, 16)
    assert first.shape == (48, 3, 16, 16) and again.shape == (24, 3, 16, 16)
    assert np.shares_memory(first, again)  # the same memory, request after request
    assert not np.shares_memory(buffers.get(24, 20), first)  # another patch size: a new array
    assert not np.shares_memory(buffers.get(49, 16), buffers.get(8, 16))  # over the cap: fresh
    others: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: others.append(buffers.get(24, 20)))
    thread.start()
    thread.join()
    assert not np.shares_memory(others[0], buffers.get(24, 20))  # each thread its own
    recipe = parse_recipe("polyp")
    boxes = [Box(10, 10, 20, 20), Box(50, 50, 30, 20)]
    out = buffers.get(48, 16)
    assert extract_many(image, boxes, recipe, 16, out=out) is out
    np.testing.assert_array_equal(out, extract_many(image, boxes, recipe, 16))
    with pytest.raises(ValueError, match="out must be"):
        extract_many(image, boxes, recipe, 16, out=buffers.get(47, 16))


@pytest.mark.parametrize(
    "box",
    [
        Box(10, 10, 0, 10),
        Box(10, 10, 10, -1),
        Box(float("nan"), 0, 10, 10),
        Box(200, 10, 10, 10),
        Box(-30, 10, 20, 10),
        Box(10, 120, 10, 10),
    ],
)
def test_invalid_boxes(box: Box) -> None:
    with pytest.raises(InvalidInput):
        validate_box(box, 120, 160)


def test_partly_outside_box_is_accepted() -> None:
    validate_box(Box(150, 110, 40, 40), 120, 160)
