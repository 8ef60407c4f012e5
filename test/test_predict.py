"""The predict CLI (monodepth2 test_simple style) on a random-weight Lite checkpoint."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from hr_depth_ros.tools.predict import collect_images, main, read_rgb


@pytest.fixture()
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'images'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), rng.integers(0, 255, (100, 300, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / 'b.jpg'), rng.integers(0, 255, (192, 640, 3), dtype=np.uint8))
    (folder / 'broken.png').write_bytes(b'not an image at all')
    (folder / 'notes.txt').write_text('ignored')
    return folder


def test_collect_images_filters_extensions_and_previous_results(image_folder):
    (image_folder / 'a_disp.jpeg').write_bytes(b'')
    names = [p.name for p in collect_images([str(image_folder)], None)]
    assert names == ['a.png', 'b.jpg', 'broken.png']
    assert [p.name for p in collect_images([str(image_folder)], 'jpg')] == ['b.jpg']


def test_read_rgb_names_the_bad_file(image_folder):
    with pytest.raises(ValueError, match='broken.png'):
        read_rgb(image_folder / 'broken.png')
    rgb = read_rgb(image_folder / 'a.png')
    bgr = cv2.imread(str(image_folder / 'a.png'))
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])


def test_predict_writes_disparity_and_colour_image(image_folder, lite_checkpoint, tmp_path, capsys):
    out = tmp_path / 'out'
    rc = main(['--weights', str(lite_checkpoint), '--device', 'cpu', '--output-dir', str(out),
               '--no-progress', str(image_folder)])
    err = capsys.readouterr().err
    assert rc == 1  # one bad file
    assert 'broken.png' in err
    for stem, (h, w) in (('a', (100, 300)), ('b', (192, 640))):
        disp = np.load(out / f'{stem}_disp.npy')
        assert disp.shape == (192, 640) and disp.dtype == np.float32
        assert np.all((disp > 0) & (disp < 1))
        colour = cv2.imread(str(out / f'{stem}_disp.jpeg'))
        assert colour.shape == (h, w, 3)
    assert not (out / 'broken_disp.npy').exists()


def test_predict_matches_the_inference_engine(image_folder, lite_checkpoint, tmp_path):
    from hr_depth_ros.core.inference import DepthEstimator

    rc = main(['--weights', str(lite_checkpoint), '--device', 'cpu', '--output-dir', str(tmp_path),
               '--no-progress', str(image_folder / 'b.jpg')])
    assert rc == 0
    expected = DepthEstimator(lite_checkpoint, device='cpu').predict_disparity(read_rgb(image_folder / 'b.jpg'))
    np.testing.assert_allclose(np.load(tmp_path / 'b_disp.npy'), expected, atol=1e-6)


def test_backends_write_the_same_disparity(image_folder, lite_checkpoint, tmp_path, capsys):
    from hr_depth_ros.core.backends import openvino_version

    if openvino_version() is None:
        pytest.skip('openvino is not installed')
    image = str(image_folder / 'b.jpg')
    for backend in ('torch', 'openvino'):
        assert main(['--weights', str(lite_checkpoint), '--device', 'cpu', '--backend', backend, '--threads', '1',
                     '--output-dir', str(tmp_path / backend), '--no-progress', image]) == 0
        assert f'with {backend}' in capsys.readouterr().out
    disparity = {backend: np.load(tmp_path / backend / 'b_disp.npy') for backend in ('torch', 'openvino')}
    assert np.abs(disparity['openvino'] - disparity['torch']).max() <= 1e-3  # the parity bound
    # Outside the option table's limits: refused before loading, naming the option.
    assert main(['--weights', str(lite_checkpoint), '--threads', '-1', image]) == 2
    assert 'threads' in capsys.readouterr().err


def test_missing_weights_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / 'no_such_checkpoint'
    assert main(['--weights', str(missing), str(tmp_path)]) == 2
    assert str(missing) in capsys.readouterr().err
