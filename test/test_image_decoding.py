"""Tests for hr_depth_ros.core.image_decoding (messages are plain namespaces, as rclpy/rosbags fields)."""
from __future__ import annotations

import array
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from hr_depth_ros.core import image_decoding as dec
from hr_depth_ros.core.image_decoding import MalformedImage, UnsupportedEncoding


def smooth_rgb(height: int = 16, width: int = 24) -> np.ndarray:
    """A smooth colour gradient (Bayer / YUV round trips are accurate on smooth images)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([40 + 6 * u, 60 + 8 * v, 200 - 3 * u - 2 * v], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, container=bytes):
    """An Image-like namespace with ``pad`` junk bytes at the end of every row."""
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    if bigendian:
        pixels = pixels.astype(pixels.dtype.newbyteorder('>'))
    rows = pixels.reshape(height, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    raw = padded.tobytes()
    data = {bytes: raw, 'array': array.array('B', raw), 'numpy': np.frombuffer(raw, np.uint8).copy(),
            'list': list(raw)}[container]
    return SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
                           step=padded.shape[1], data=data)


@pytest.mark.parametrize('container', [bytes, 'array', 'numpy', 'list'])
@pytest.mark.parametrize('pad', [0, 5])
def test_rgb8_any_container_with_padding(container, pad):
    rgb = smooth_rgb()
    out = dec.image_to_rgb(image_msg(rgb, 'rgb8', pad=pad, container=container))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_rgb8_is_zero_copy_view():
    rgb = smooth_rgb()
    msg = image_msg(rgb, 'rgb8', pad=3, container='numpy')
    out = dec.image_to_rgb(msg)
    assert np.shares_memory(out, msg.data)


@pytest.mark.parametrize('encoding,to_raw', [
    ('bgr8', lambda rgb: rgb[..., ::-1]),
    ('rgba8', lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
    ('bgra8', lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
])
def test_colour_encodings(encoding, to_raw):
    rgb = smooth_rgb()
    out = dec.image_to_rgb(image_msg(to_raw(rgb), encoding, pad=2))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('encoding,order', [('rgb16', [0, 1, 2]), ('bgr16', [2, 1, 0]),
                                            ('rgba16', [0, 1, 2, 0]), ('bgra16', [2, 1, 0, 0])])
@pytest.mark.parametrize('bigendian', [False, True])
def test_16bit_colour(encoding, order, bigendian):
    rgb = smooth_rgb()
    raw16 = rgb[..., order].astype(np.uint16) * 256 + 77  # low byte is dropped
    out = dec.image_to_rgb(image_msg(raw16, encoding, pad=6, bigendian=bigendian))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('encoding', ['mono8', '8UC1'])
def test_mono8_replicated(encoding):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    out = dec.image_to_rgb(image_msg(gray, encoding, pad=1))
    assert out.shape == (12, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
@pytest.mark.parametrize('bigendian', [False, True])
def test_mono16_scaled_and_endianness(encoding, bigendian):
    gray16 = (np.arange(8 * 6, dtype=np.uint16).reshape(8, 6) * 1000)
    msg = image_msg(gray16, encoding, pad=4, bigendian=bigendian)
    out = dec.image_to_rgb(msg)
    np.testing.assert_array_equal(out[..., 1], (gray16 >> 8).astype(np.uint8))
    raw = dec.image_to_array(msg)
    assert raw.shape == (8, 6) and raw.dtype == np.uint16 and raw.dtype.isnative
    np.testing.assert_array_equal(raw, gray16)


def bayer_mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """ROS bayer pattern string (e.g. 'rggb': top-left 2x2 is R G / G B) -> mosaic."""
    index = {'r': 0, 'g': 1, 'b': 2}
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, index[pattern[k]]]
    return mosaic


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer_patterns(pattern):
    rgb = smooth_rgb(20, 24)
    out = dec.image_to_rgb(image_msg(bayer_mosaic(rgb, pattern), f'bayer_{pattern}8', pad=2))
    inner = (slice(2, -2), slice(2, -2))
    error = np.abs(out[inner].astype(int) - rgb[inner].astype(int))
    # Demosaicing a smooth gradient is near exact; a wrong pattern swaps channels (error ~100+).
    assert error.max() <= 12, f'{pattern}: max error {error.max()}'


@pytest.mark.parametrize('encoding,order', [('yuv422', 'uyvy'), ('uyvy', 'uyvy'),
                                            ('yuv422_yuy2', 'yuyv'), ('yuyv', 'yuyv')])
def test_yuv422(encoding, order):
    rgb = smooth_rgb(8, 12)
    r, g, b = np.moveaxis(rgb.astype(np.float32), -1, 0)
    # BT.601 video range, what OpenCV's packed 4:2:2 decoders assume.
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u_full = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v_full = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u = (u_full[:, 0::2] + u_full[:, 1::2]) / 2
    v = (v_full[:, 0::2] + v_full[:, 1::2]) / 2
    packed = np.empty((8, 12, 2), np.uint8)
    if order == 'uyvy':
        packed[:, 0::2, 0], packed[:, 0::2, 1], packed[:, 1::2, 0], packed[:, 1::2, 1] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        packed[:, 0::2, 0], packed[:, 0::2, 1], packed[:, 1::2, 0], packed[:, 1::2, 1] = y[:, 0::2], u, y[:, 1::2], v
    out = dec.image_to_rgb(image_msg(packed, encoding, pad=4))
    assert out.shape == (8, 12, 3)
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 12
    odd = image_msg(packed[:, :11], encoding)
    with pytest.raises(MalformedImage, match='even'):
        dec.image_to_rgb(odd)


def test_image_to_array_32fc1_and_multichannel():
    depth = np.linspace(0.5, 80, 6 * 7, dtype=np.float32).reshape(6, 7)
    depth[0, 0] = np.nan
    out = dec.image_to_array(image_msg(depth, '32FC1', pad=4, container='numpy'))
    assert out.dtype == np.float32 and out.shape == (6, 7)
    np.testing.assert_array_equal(out, depth)
    big = dec.image_to_array(image_msg(depth, '32FC1', bigendian=True))
    np.testing.assert_array_equal(big, depth)
    rgb = smooth_rgb()
    np.testing.assert_array_equal(dec.image_to_array(image_msg(rgb, 'rgb8')), rgb)


def test_malformed_messages_name_the_numbers():
    rgb = smooth_rgb(4, 5)
    msg = image_msg(rgb, 'rgb8')
    short = SimpleNamespace(**{**vars(msg), 'data': msg.data[:-1]})
    with pytest.raises(MalformedImage, match=r'\b59\b.*\b60\b'):
        dec.image_to_rgb(short)
    small_step = SimpleNamespace(**{**vars(msg), 'step': 14})
    with pytest.raises(MalformedImage, match='step 14 is less than'):
        dec.image_to_rgb(small_step)
    for height, width in [(0, 5), (4, 0)]:
        empty = SimpleNamespace(**{**vars(msg), 'height': height, 'width': width})
        with pytest.raises(MalformedImage, match='no pixels'):
            dec.image_to_rgb(empty)


def test_unsupported_encodings_list_supported():
    msg = image_msg(smooth_rgb(4, 4), 'rgb8')
    for encoding in ['nv21', '32FC1', '16SC3']:
        bad = SimpleNamespace(**{**vars(msg), 'encoding': encoding})
        with pytest.raises(UnsupportedEncoding, match=f"{encoding}.*supported: .*rgb8"):
            dec.image_to_rgb(bad)
    with pytest.raises(UnsupportedEncoding, match='nv21'):
        dec.image_to_array(SimpleNamespace(**{**vars(msg), 'encoding': 'nv21'}))


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_compressed_round_trip(fmt):
    rgb = smooth_rgb(32, 48)
    encoded = dec.encode_compressed(rgb, fmt, quality=95)
    fmt_string, payload = encoded
    assert fmt_string == f'rgb8; {fmt} compressed bgr8' and bytes(encoded) == payload
    for data in (payload, np.frombuffer(payload, np.uint8), array.array('B', payload)):
        out = dec.compressed_to_rgb(SimpleNamespace(format=fmt_string, data=data))
        assert out.shape == rgb.shape
        tolerance = 0 if fmt == 'png' else 8
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() <= max(tolerance, 0)


def test_compressed_errors():
    with pytest.raises(MalformedImage, match='neither JPEG nor PNG'):
        dec.compressed_to_rgb(SimpleNamespace(format='jpeg', data=b'not a jpeg at all'))
    with pytest.raises(MalformedImage, match='no data'):
        dec.compressed_to_rgb(SimpleNamespace(format='jpeg', data=b''))
    with pytest.raises(UnsupportedEncoding, match='compressedDepth'):
        dec.compressed_to_rgb(SimpleNamespace(format='16UC1; compressedDepth png', data=b'\x00' * 20))
    with pytest.raises(UnsupportedEncoding, match='webp'):
        dec.encode_compressed(smooth_rgb(), 'webp')


def _compressed_depth_msg(encoding: str, image: np.ndarray, quant_a: float = 0.0, quant_b: float = 0.0):
    """A compressedDepth CompressedImage laid out by hand as image_transport's plugin writes it: a 12-byte header
    (int32 format 0, float32 quantisation A, B; little-endian) then a 16-bit PNG."""
    import struct

    ok, png = cv2.imencode('.png', image.astype(np.uint16))
    assert ok
    return SimpleNamespace(format=f'{encoding}; compressedDepth png',
                           data=struct.pack('<iff', 0, quant_a, quant_b) + png.tobytes())


def test_compressed_depth_is_read_in_metres():
    """image_transport's compressedDepth (what ``ros2 bag record`` stores for .../compressedDepth): 16UC1 is PNG
    millimetres; 32FC1 is PNG-quantised inverse depth, depth = A / (q - B), q = 0 no data."""
    mm = np.array([[0, 500, 1234], [65535, 1, 4000]], np.uint16)
    out = dec.depth_to_metres(_compressed_depth_msg('16UC1', mm))
    assert np.isnan(out[0, 0]) and np.allclose(out[~np.isnan(out)], mm[mm > 0] / 1000.0)
    a, b = 100.0 * 101.0, 1.0 - 100.0 * 101.0 / 10.0  # the plugin's defaults: quantisation 100, depth_max 10 m
    metres = np.array([[0.5, 1.0, 2.0], [5.0, 9.0, np.nan]], np.float32)
    q = np.where(np.isfinite(metres), np.round(a / np.nan_to_num(metres, nan=1.0) + b), 0)
    out = dec.depth_to_metres(_compressed_depth_msg('32FC1', q, a, b))
    assert np.isnan(out[1, 2]) and np.allclose(out[:, :2], metres[:, :2], rtol=5e-3)
    # The repository's writer (bags, tests) produces what the reader takes, both encodings.
    for encoding, depth in (('16UC1', mm), ('32FC1', metres)):
        fmt, payload = dec.encode_compressed_depth(depth, encoding)
        again = dec.depth_to_metres(SimpleNamespace(format=fmt, data=np.frombuffer(payload, np.uint8)))
        expected = dec.depth_to_metres(_compressed_depth_msg('16UC1', mm)) if encoding == '16UC1' else metres
        assert np.array_equal(np.isnan(again), np.isnan(expected))
        assert np.allclose(again[~np.isnan(again)], expected[~np.isnan(expected)], rtol=5e-3)


def test_compressed_depth_errors_name_the_format():
    mm = np.ones((4, 4), np.uint16)
    with pytest.raises(UnsupportedEncoding, match='compressedDepth rvl'):
        dec.depth_to_metres(SimpleNamespace(format='16UC1; compressedDepth rvl', data=b'\x00' * 40))
    with pytest.raises(UnsupportedEncoding, match='rgb8; jpeg'):
        dec.depth_to_metres(SimpleNamespace(format='rgb8; jpeg compressed bgr8', data=b'\x00' * 40))
    with pytest.raises(MalformedImage, match='no image'):
        dec.depth_to_metres(SimpleNamespace(format='16UC1; compressedDepth png', data=b'\x00' * 12))
    with pytest.raises(MalformedImage, match='neither JPEG nor PNG'):
        dec.depth_to_metres(SimpleNamespace(format='16UC1; compressedDepth png', data=b'\x00' * 40))
    rgb_png = _compressed_depth_msg('16UC1', mm)
    ok, colour = cv2.imencode('.png', np.zeros((4, 4, 3), np.uint8))
    rgb_png.data = rgb_png.data[:12] + colour.tobytes()
    with pytest.raises(MalformedImage, match='one-channel 16-bit'):
        dec.depth_to_metres(rgb_png)
    with pytest.raises(MalformedImage, match='max'):
        dec.depth_to_metres(_compressed_depth_msg('16UC1', mm), max_pixels=10)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_rgb_to_image_fields_round_trip(encoding):
    rgb = smooth_rgb()
    fields = dec.rgb_to_image_fields(rgb, encoding)
    assert fields['encoding'] == encoding and fields['is_bigendian'] == 0
    assert fields['data'].dtype == np.uint8 and fields['data'].size == fields['height'] * fields['step']
    out = dec.image_to_rgb(SimpleNamespace(**fields))
    if encoding == 'mono8':
        np.testing.assert_array_equal(out[..., 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    else:
        np.testing.assert_array_equal(out, rgb)
    with pytest.raises(UnsupportedEncoding):
        dec.rgb_to_image_fields(rgb, 'yuv422')
    with pytest.raises(ValueError, match='H x W x 3 uint8'):
        dec.rgb_to_image_fields(rgb[..., 0], encoding)


def test_array_to_image_fields():
    depth = np.random.default_rng(0).uniform(1, 50, (5, 9)).astype(np.float32)
    fields = dec.array_to_image_fields(depth, '32FC1')
    assert fields['step'] == 9 * 4 and fields['encoding'] == '32FC1'
    np.testing.assert_array_equal(dec.image_to_array(SimpleNamespace(**fields)), depth)
    mm = (depth * 1000).astype(np.uint16)
    np.testing.assert_array_equal(dec.image_to_array(SimpleNamespace(**dec.array_to_image_fields(mm, '16UC1'))), mm)
    with pytest.raises(ValueError, match='does not match encoding'):
        dec.array_to_image_fields(depth, '16UC1')
    with pytest.raises(ValueError, match='does not match encoding'):
        dec.array_to_image_fields(depth[..., None].repeat(3, axis=2), '32FC1')


# --- hostile input (issue 12 items 1 and 2, issue 13) -------------------------------------------

def _patched_size(payload: bytes, fmt: str, width: int, height: int) -> bytes:
    """``payload`` with the size in its header replaced (a decompression bomb of a few KB)."""
    if fmt == 'png':
        return payload[:16] + width.to_bytes(4, 'big') + height.to_bytes(4, 'big') + payload[24:]
    at = payload.index(b'\xff\xc0') + 5
    return payload[:at] + height.to_bytes(2, 'big') + width.to_bytes(2, 'big') + payload[at + 4:]


@pytest.mark.parametrize('fmt', ['png', 'jpeg'])
def test_decompression_bombs_are_refused_from_the_header_before_decoding(fmt, monkeypatch):
    bilevel = cv2.imencode('.png', np.zeros((8000, 8000), np.uint8), [cv2.IMWRITE_PNG_BILEVEL, 1])[1].tobytes()
    payload = bilevel if fmt == 'png' else _patched_size(dec.encode_compressed(smooth_rgb(), 'jpeg').data, fmt,
                                                         8000, 8000)
    assert len(payload) < 30_000 and dec.compressed_size(payload) == (fmt, 8000, 8000)
    calls = []
    monkeypatch.setattr(dec.cv2, 'imdecode', lambda *a: calls.append(a))
    with pytest.raises(MalformedImage, match=r'8000x8000.*\b50\.0 MP'):
        dec.compressed_to_rgb(SimpleNamespace(format=fmt, data=payload))
    assert calls == []  # never handed to the decoder
    with pytest.raises(MalformedImage, match=r'\b0\.0 MP'):
        dec.compressed_to_rgb(SimpleNamespace(format=fmt, data=dec.encode_compressed(smooth_rgb(), fmt).data),
                              max_pixels=100)


def test_raw_images_above_max_pixels_are_malformed():
    msg = SimpleNamespace(height=40000, width=50000, encoding='rgb8', is_bigendian=0, step=150000, data=b'')
    with pytest.raises(MalformedImage, match='50000x40000 = 2000.0 MP'):
        dec.image_to_rgb(msg)
    small = image_msg(smooth_rgb(), 'rgb8')
    with pytest.raises(MalformedImage, match='max_pixels'):
        dec.image_to_array(small, max_pixels=100)
    assert dec.image_to_rgb(small, max_pixels=16 * 24).shape == (16, 24, 3)


def test_opencv_backstop_is_set_before_opencv_loads(tmp_path):
    """In a fresh process that loads the node (which imports cv2 first): OpenCV itself refuses 300 MP."""
    import os
    import struct
    import subprocess
    import sys
    import zlib

    png = dec.encode_compressed(smooth_rgb(8, 8), 'png').data
    ihdr = b'IHDR' + struct.pack('>II', 20000, 15000) + png[24:29]  # 300 MP, valid CRC
    (tmp_path / 'big.png').write_bytes(png[:12] + ihdr + struct.pack('>I', zlib.crc32(ihdr)) + png[33:])
    code = ('import sys, types; import hr_depth_ros.ros.depth_node; import cv2, numpy as np\n'
            'from hr_depth_ros.core import image_decoding as dec\n'
            'data = np.fromfile(sys.argv[1], np.uint8)\n'
            'try:\n    cv2.imdecode(data, cv2.IMREAD_COLOR)\nexcept cv2.error as e:\n    print("refused", e)\n'
            'try:\n    dec.compressed_to_rgb(types.SimpleNamespace(format="png", data=data), max_pixels=1 << 30)\n'
            'except dec.MalformedImage as e:\n    print("malformed", e)\n')
    env = {k: v for k, v in os.environ.items() if k != 'OPENCV_IO_MAX_IMAGE_PIXELS'}
    result = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'big.png')], capture_output=True, text=True,
                            timeout=120, env=env, cwd=Path(__file__).resolve().parents[1])
    refused = result.stdout.split('malformed')[0]
    malformed = result.stdout[len(refused):]
    assert refused.startswith('refused') and 'CV_IO_MAX_IMAGE_PIXELS' in refused, result.stderr[-2000:]
    # the backstop surfaces as a malformed frame, without a traceback or codec noise
    assert 'CV_IO_MAX_IMAGE_PIXELS' in malformed and result.stderr == ''


def test_corrupt_or_cut_payloads_are_malformed_and_codec_noise_stays_off_stderr(capfd):
    jpeg = dec.encode_compressed(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), 'jpeg').data
    png = dec.encode_compressed(smooth_rgb(64, 64), 'png').data
    middle = len(jpeg) // 2
    garbled_jpeg = jpeg[:middle] + bytes(50) + jpeg[middle + 50:]  # libjpeg would return a partly decoded image
    middle = len(png) // 2
    garbled_png = png[:middle] + bytes(50) + png[middle + 50:]
    for payload, reason in [(jpeg[:len(jpeg) // 2], 'no end marker'), (garbled_jpeg, 'Corrupt JPEG data'),
                            (png[:len(png) // 2], 'no end marker'), (garbled_png, 'libpng error')]:
        with pytest.raises(MalformedImage, match=reason):
            dec.compressed_to_rgb(SimpleNamespace(format='jpeg', data=payload))
    captured = capfd.readouterr()
    assert captured.err == '' and captured.out == ''


def test_user_strings_are_shortened_in_errors():
    with pytest.raises(UnsupportedEncoding) as info:
        dec.image_to_rgb(SimpleNamespace(height=2, width=2, encoding='x' * 100_000, is_bigendian=0, step=6,
                                         data=bytes(12)))
    assert len(str(info.value)) < 600 and '100000 chars' in str(info.value)


def test_step_zero_with_packed_data_is_accepted_with_one_warning(caplog):
    rgb = smooth_rgb()
    msg = image_msg(rgb, 'rgb8')
    msg.step = 0
    dec._WARNED.discard('step0')
    with caplog.at_level('WARNING', logger='hr_depth_ros.core.image_decoding'):
        np.testing.assert_array_equal(dec.image_to_rgb(msg), rgb)
        np.testing.assert_array_equal(dec.image_to_rgb(msg), rgb)
    assert len([r for r in caplog.records if 'step 0' in r.getMessage()]) == 1
    msg.data = msg.data[:-1]  # step 0 and a length that does not fit: dropped with the reason as before
    with pytest.raises(MalformedImage, match='step 0 is less than'):
        dec.image_to_rgb(msg)
