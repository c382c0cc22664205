from __future__ import annotations

import numpy as np
import pytest

from edgepose.geometry import (
    box_to_frame,
    crop_and_resize_into,
    frame_to_box,
    letterbox_box,
    letterbox_content_size,
    paste_region,
    paste_scaled_into,
)
from edgepose.pose import CropBox


def test_letterbox_box_landscape_pads_top_and_bottom() -> None:
    box = letterbox_box(480, 640)
    # A 640x640 square around a 640x480 frame: 80 px of padding above and below.
    assert box.xmin == 0 and box.xmax == 1
    assert box.ymin == pytest.approx(-80 / 480)
    assert box.ymax == pytest.approx(1 + 80 / 480)


def test_letterbox_box_portrait_pads_left_and_right() -> None:
    box = letterbox_box(640, 384)
    assert box.ymin == 0 and box.ymax == 1
    assert box.xmin == pytest.approx(-128 / 384)
    assert box.xmax == pytest.approx(1 + 128 / 384)


def test_letterbox_rejects_empty_frame() -> None:
    with pytest.raises(ValueError):
        letterbox_box(0, 640)


def test_paste_region_of_letterbox() -> None:
    region = paste_region(letterbox_box(480, 640), 480, 640, 192, 192)
    assert (region.src_y0, region.src_y1, region.src_x0, region.src_x1) == (0, 480, 0, 640)
    # 480 rows scaled by 192/640 = 144 rows, centred: 24 rows of padding each side.
    assert (region.dst_y0, region.dst_y1, region.dst_x0, region.dst_x1) == (24, 168, 0, 192)


def test_effective_box_accounts_for_pixel_rounding() -> None:
    # 384 px wide photo in a 640 px square: the paste starts at 38.4 model px, rounded to 38.
    frame = np.full((640, 384, 3), 100, np.uint8)
    out = np.zeros((192, 192, 3), np.uint8)
    box = crop_and_resize_into(frame, letterbox_box(640, 384), out)
    assert (out[:, 37] == 0).all() and (out[:, 38] == 100).all()
    # Model x = 38/192 is the frame's left edge in the box that was really used.
    np.testing.assert_allclose(box_to_frame(np.array([[0.0, 38 / 192]]), box), [[0.0, 0.0]], atol=1e-9)


def test_crop_and_resize_into_keeps_aspect_and_pads_with_zero() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :320] = (255, 0, 0)  # left half red
    frame[:, 320:] = (0, 0, 255)  # right half blue
    out = np.full((192, 192, 3), 7, np.uint8)
    crop_and_resize_into(frame, letterbox_box(480, 640), out)
    assert (out[:24] == 0).all() and (out[168:] == 0).all()
    assert tuple(out[96, 10]) == (255, 0, 0)
    assert tuple(out[96, 180]) == (0, 0, 255)


def test_crop_and_resize_into_writes_in_place() -> None:
    frame = np.full((100, 100, 3), 50, np.uint8)
    out = np.zeros((1, 32, 32, 3), np.uint8)
    view = out[0]
    crop_and_resize_into(frame, CropBox(0, 0, 1, 1), view)
    assert (out == 50).all()


def test_crop_box_partly_outside_frame() -> None:
    frame = np.full((100, 100, 3), 200, np.uint8)
    out = np.full((50, 50, 3), 9, np.uint8)
    # The box covers x from -0.5 to 0.5: the left half of the input is padding.
    crop_and_resize_into(frame, CropBox(ymin=0, xmin=-0.5, ymax=1, xmax=0.5), out)
    assert (out[:, :25] == 0).all()
    assert (out[:, 25:] == 200).all()


def test_crop_box_entirely_outside_frame_gives_zeros() -> None:
    out = np.full((8, 8, 3), 9, np.uint8)
    crop_and_resize_into(np.ones((10, 10, 3), np.uint8), CropBox(2, 2, 3, 3), out)
    assert (out == 0).all()


def test_box_mapping_round_trip() -> None:
    box = letterbox_box(480, 640)
    model_yx = np.array([[0.5, 0.5], [0.125, 0.0], [0.875, 1.0]])
    frame_yx = box_to_frame(model_yx, box)
    # The model's top padding edge (y = 80/640 = 0.125) is the frame's top edge.
    np.testing.assert_allclose(frame_yx, [[0.5, 0.5], [0.0, 0.0], [1.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(frame_to_box(frame_yx, box), model_yx, atol=1e-12)


def test_mapping_matches_pixels_of_resized_image() -> None:
    """A bright dot in the frame lands where box_to_frame says its model pixel maps back to."""
    frame = np.zeros((300, 500, 3), np.uint8)
    frame[200:204, 100:104] = 255
    out = np.zeros((256, 256, 3), np.uint8)
    box = letterbox_box(300, 500)
    crop_and_resize_into(frame, box, out)
    ys, xs = np.nonzero(out[:, :, 0] > 64)
    model_yx = np.array([[(ys.mean() + 0.5) / 256, (xs.mean() + 0.5) / 256]])
    frame_px = box_to_frame(model_yx, box)[0] * [300, 500]
    np.testing.assert_allclose(frame_px, [202, 102], atol=1.5)


def test_letterbox_odd_padding_goes_after_in_whole_pixels() -> None:
    # 641 - 480 = 161 rows of padding: 80 above, 81 below, so the box edges stay on pixel boundaries.
    box = letterbox_box(480, 641)
    assert (box.ymin * 480, box.ymax * 480) == pytest.approx((-80, 561), abs=1e-9)
    box = letterbox_box(301, 200)
    assert (box.xmin * 200, box.xmax * 200) == pytest.approx((-50, 251), abs=1e-9)


def test_letterbox_of_a_one_pixel_frame_and_the_error_names_the_size() -> None:
    assert letterbox_box(1, 1) == CropBox(0.0, 0.0, 1.0, 1.0)
    assert letterbox_box(1, 3) == CropBox(-1.0, 0.0, 2.0, 1.0)
    for height_px, width_px in [(0, 640), (480, 0), (-1, 5)]:
        with pytest.raises(ValueError, match=f"frame size must be positive, got {width_px}x{height_px}"):
            letterbox_box(height_px, width_px)


@pytest.mark.parametrize(
    "box",
    [
        CropBox(0.5, 0.1, 0.5, 0.9),
        CropBox(0.1, 0.5, 0.9, 0.5),
        CropBox(0.6, 0.1, 0.5, 0.9),
        CropBox(0.1, 0.6, 0.9, 0.5),
    ],
)
def test_paste_region_refuses_a_box_without_area(box: CropBox) -> None:
    with pytest.raises(ValueError, match="crop box has no area"):
        paste_region(box, 100, 100, 32, 32)


def test_a_box_under_a_pixel_high_is_no_error_but_pastes_nothing() -> None:
    # 0.5 x 0.5 px of a 100 px frame has an area, too small to cover a whole source pixel.
    region = paste_region(CropBox(0.5, 0.5, 0.505, 0.505), 100, 100, 8, 8)
    assert region.empty


def test_mapping_keeps_float_precision_for_integer_input() -> None:
    box = CropBox(ymin=0.25, xmin=-0.5, ymax=0.75, xmax=1.5)
    corners = np.array([[0, 0], [1, 1]])  # integer model coordinates
    np.testing.assert_allclose(box_to_frame(corners, box), [[0.25, -0.5], [0.75, 1.5]])
    np.testing.assert_allclose(frame_to_box(corners, box), [[-0.5, 0.25], [1.5, 0.75]])


def test_frame_to_box_maps_y_and_x_each_through_its_own_edges() -> None:
    box = CropBox(ymin=0.1, xmin=0.2, ymax=0.5, xmax=1.0)
    frame_yx = np.array([[0.3, 0.6], [0.1, 1.0], [0.5, 0.2]])
    np.testing.assert_allclose(frame_to_box(frame_yx, box), [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]], atol=1e-12)


def test_non_square_input_is_filled_by_rows_and_columns() -> None:
    """MultiPose inputs are not square: height and width of the output are not interchangeable."""
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:50] = 200  # top half bright
    out = np.full((64, 128, 3), 9, np.uint8)
    box = crop_and_resize_into(frame, CropBox(0.0, 0.0, 1.0, 1.0), out)
    assert (out[:31] == 200).all() and (out[33:] == 0).all()
    assert box == CropBox(0.0, 0.0, 1.0, 1.0)


def test_effective_box_of_a_box_reaching_above_and_left_of_the_frame() -> None:
    # 40.4 px of padding above and 10.2 px left, in a 100x100 frame into 64x64: the paste starts on whole pixels.
    frame = np.full((100, 100, 3), 150, np.uint8)
    out = np.zeros((64, 64, 3), np.uint8)
    requested = CropBox(ymin=-0.404, xmin=-0.102, ymax=0.596, xmax=0.898)
    region = paste_region(requested, 100, 100, 64, 64)
    box = crop_and_resize_into(frame, requested, out)
    assert (region.dst_y0, region.dst_x0) == (26, 7)  # round(40.4 * 0.64), round(10.2 * 0.64)
    first_row, first_col = int(np.argmax(out[:, 40, 0] > 0)), int(np.argmax(out[40, :, 0] > 0))
    assert (first_row, first_col) == (26, 7)
    # The frame's top-left corner is where the first pasted input pixel begins.
    np.testing.assert_allclose(box_to_frame(np.array([[26 / 64, 7 / 64]]), box), [[0.0, 0.0]], atol=1e-12)
    # And the box keeps the scale of what was pasted: 60 source rows (0..60) into 38 input rows (26..64).
    assert (box.ymax - box.ymin) * 100 == pytest.approx(64 * 60 / 38)


def test_scaled_frame_pastes_where_the_resize_would_and_a_wrong_size_is_refused() -> None:
    frame = np.random.default_rng(3).integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    assert letterbox_content_size(480, 640, 192) == (192, 144)
    assert letterbox_content_size(720, 1280, 256) == (256, 144)
    resized = np.full((192, 192, 3), 7, np.uint8)
    expected_box = crop_and_resize_into(frame, letterbox_box(480, 640), resized)
    scaled = resized[24:168].copy()
    pasted = np.full((192, 192, 3), 7, np.uint8)
    assert paste_scaled_into(scaled, 480, 640, pasted) == expected_box
    np.testing.assert_array_equal(pasted, resized)  # margins zeroed, content as given
    assert paste_scaled_into(scaled[:, :190], 480, 640, pasted) is None


def test_scaled_letterbox_of_a_portrait_frame_and_a_non_square_input() -> None:
    # 480 wide x 640 high into 192: 144 x 192 content, 24 columns of padding either side.
    assert letterbox_content_size(640, 480, 192) == (144, 192)
    scaled = np.full((192, 144, 3), 60, np.uint8)
    out = np.full((192, 192, 3), 9, np.uint8)
    assert paste_scaled_into(scaled, 640, 480, out) == letterbox_box(640, 480)
    assert (out[:, 24:168] == 60).all() and (out[:, :24] == 0).all() and (out[:, 168:] == 0).all()
    # A non-square input: the letterbox square of 640x480 stretched into 96 high x 256 wide.
    wide = np.full((96, 256, 3), 9, np.uint8)
    expected = np.full((96, 256, 3), 9, np.uint8)
    expected_box = crop_and_resize_into(np.full((480, 640, 3), 60, np.uint8), letterbox_box(480, 640), expected)
    region = paste_region(letterbox_box(480, 640), 480, 640, 96, 256)
    assert (region.dst_y0, region.dst_y1, region.dst_x0, region.dst_x1) == (12, 84, 0, 256)
    content = np.full((72, 256, 3), 60, np.uint8)
    assert paste_scaled_into(content, 480, 640, wide) == expected_box
    np.testing.assert_array_equal(wide, expected)
