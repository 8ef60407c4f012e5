"""Colourising depth maps."""
import cv2
import numpy as np
import pytest

from hr_depth_ros.core.visualization import colorize, value_range


def test_colorize_matches_opencv_colormap_at_the_ends():
    values = np.array([[0.0, 1.0]], dtype=np.float32)
    rgb = colorize(values, cmap='magma', vmin=0.0, vmax=1.0)
    lut = cv2.applyColorMap(np.array([[0, 255]], dtype=np.uint8), cv2.COLORMAP_MAGMA)
    assert rgb.shape == (1, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, lut[..., ::-1])
    np.testing.assert_array_equal(colorize(values, vmin=0.0, vmax=1.0, bgr=True), lut)


def test_invalid_values_get_the_invalid_colour_and_range_is_robust():
    values = np.array([[np.nan, 1.0, 2.0, np.inf]], dtype=np.float32)
    rgb = colorize(values, invalid_color=(1, 2, 3))
    assert tuple(rgb[0, 0]) == (1, 2, 3) and tuple(rgb[0, 3]) == (1, 2, 3)
    lo, hi = value_range(np.concatenate([np.linspace(0, 1, 99), [1000.0]]), percentile=95)
    assert lo == 0.0 and hi < 2.0  # the outlier does not set the range


def test_bad_arguments():
    with pytest.raises(ValueError, match='colour map'):
        colorize(np.zeros((2, 2)), cmap='rainbowish')
    with pytest.raises(ValueError, match='2-D'):
        colorize(np.zeros((2, 2, 2)))
