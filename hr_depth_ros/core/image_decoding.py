"""sensor_msgs Image / CompressedImage fields <-> NumPy, for rclpy and ``rosbags`` messages alike.

ROS-free and duck-typed: a message is anything with the fields of ``sensor_msgs/Image``
(``height, width, encoding, is_bigendian, step, data``) or ``sensor_msgs/CompressedImage``
(``format, data``). ``data`` may be ``bytes``, ``bytearray``, ``memoryview``, ``array.array``
(rclpy), a NumPy ``uint8`` array (rosbags) or a list of ints.

Decoding is zero-copy where the encoding allows it: ``image_to_rgb`` on ``rgb8`` and
``image_to_array`` on little-endian data return views of the message buffer (honouring row
padding through ``step``), which may be read-only; copy before writing into them. Other
encodings are converted by OpenCV into new arrays.

Size limits: every decoder refuses images above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`,
50 MP, well above 8K UHD's 33 MP) as malformed before allocating anything: raw images by
``height x width``, JPEG / PNG by the size in their header (SOFn / IHDR), which is parsed before
decoding; ``OPENCV_IO_MAX_IMAGE_PIXELS`` (set to ``hr_depth_ros.MAX_PIXELS_LIMIT`` by the package
unless already set, before OpenCV is loaded) is the backstop. Compressed payloads that are not
JPEG or PNG, lack their end marker or make the codec complain (libjpeg's "Corrupt JPEG data",
i.e. a partly decoded image) are malformed too; what the codecs print on stderr is captured and
put into the error, not the log.

The writers (:func:`rgb_to_image_fields`, :func:`array_to_image_fields`,
:func:`encode_compressed`) are the one implementation used by the bag writer and by the
node's message builders.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import cv2
import numpy as np

from hr_depth_ros import MAX_PIXELS_LIMIT  # also OpenCV's limit (OPENCV_IO_MAX_IMAGE_PIXELS), set by the package

DEFAULT_MAX_PIXELS = 50_000_000
"""Default largest image (width x height) any decoder accepts."""

__all__ = [
    'UnsupportedEncoding',
    'MalformedImage',
    'ImageTooLarge',
    'RGB_ENCODINGS',
    'image_to_rgb',
    'message_to_rgb',
    'image_to_array',
    'depth_to_metres',
    'compressed_depth_to_metres',
    'encode_compressed_depth',
    'DEPTH_ENCODINGS',
    'compressed_to_rgb',
    'rgb_to_image_fields',
    'array_to_image_fields',
    'encode_compressed',
    'CompressedData',
    'DEFAULT_MAX_PIXELS',
    'MAX_PIXELS_LIMIT',
    'compressed_size',
    'shorten',
    'IMAGE_FILE_EXTENSIONS',
    'read_image_file',
    'resize_rgb',
]

LOGGER = logging.getLogger(__name__)


class UnsupportedEncoding(ValueError):
    """The image encoding (or compressed format) is not one this module can decode."""


class MalformedImage(ValueError):
    """The message fields are inconsistent (sizes, step, data length) or the payload does not decode."""


class ImageTooLarge(MalformedImage):
    """The image (declared or in its header) has more pixels than allowed (``max_pixels``)."""


# encoding -> (channels, dtype) of the raw buffer; packed YUV 4:2:2 is 2 bytes per pixel.
_RAW_LAYOUT: dict[str, tuple[int, str]] = {
    'rgb8': (3, 'u1'), 'bgr8': (3, 'u1'), 'rgba8': (4, 'u1'), 'bgra8': (4, 'u1'),
    'rgb16': (3, 'u2'), 'bgr16': (3, 'u2'), 'rgba16': (4, 'u2'), 'bgra16': (4, 'u2'),
    'mono8': (1, 'u1'), 'mono16': (1, 'u2'),
    'bayer_rggb8': (1, 'u1'), 'bayer_bggr8': (1, 'u1'), 'bayer_gbrg8': (1, 'u1'), 'bayer_grbg8': (1, 'u1'),
    'yuv422': (2, 'u1'), 'uyvy': (2, 'u1'), 'yuv422_yuy2': (2, 'u1'), 'yuyv': (2, 'u1'),
}
_CV_TYPE = re.compile(r'^(8|16|32|64)(U|S|F)C([1-4])$')
_CV_DTYPES = {('8', 'U'): 'u1', ('8', 'S'): 'i1', ('16', 'U'): 'u2', ('16', 'S'): 'i2',
              ('32', 'S'): 'i4', ('32', 'F'): 'f4', ('64', 'F'): 'f8'}

# OpenCV's Bayer names are shifted by one pixel relative to ROS's (same table as cv_bridge).
_TO_RGB: dict[str, int | None] = {
    'rgb8': None,
    'bgr8': cv2.COLOR_BGR2RGB,
    'rgba8': cv2.COLOR_RGBA2RGB,
    'bgra8': cv2.COLOR_BGRA2RGB,
    'rgb16': None,
    'bgr16': cv2.COLOR_BGR2RGB,
    'rgba16': cv2.COLOR_RGBA2RGB,
    'bgra16': cv2.COLOR_BGRA2RGB,
    'mono8': cv2.COLOR_GRAY2RGB,
    '8UC1': cv2.COLOR_GRAY2RGB,
    'mono16': cv2.COLOR_GRAY2RGB,
    '16UC1': cv2.COLOR_GRAY2RGB,
    'bayer_rggb8': cv2.COLOR_BayerBG2RGB,
    'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg8': cv2.COLOR_BayerGR2RGB,
    'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
    'yuv422': cv2.COLOR_YUV2RGB_UYVY,
    'uyvy': cv2.COLOR_YUV2RGB_UYVY,
    'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUY2,
    'yuyv': cv2.COLOR_YUV2RGB_YUY2,
}
RGB_ENCODINGS: tuple[str, ...] = tuple(_TO_RGB)
"""Encodings :func:`image_to_rgb` decodes."""

_WRITE_RGB = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')


def shorten(text: Any, limit: int = 64) -> str:
    """``repr`` of a user-controlled string, cut to ``limit`` characters (for messages and logs)."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f'... ({len(text)} chars)'


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f'{what} of {width}x{height} = {width * height / 1e6:.1f} MP is above the limit of '
                             f'{max_pixels / 1e6:.1f} MP (max_pixels)')


def _layout(encoding: str) -> tuple[int, np.dtype]:
    """(channels, dtype) of an encoding's raw buffer, or UnsupportedEncoding."""
    if encoding in _RAW_LAYOUT:
        channels, code = _RAW_LAYOUT[encoding]
        return channels, np.dtype(code)
    match = _CV_TYPE.match(encoding)
    if match and (match.group(1), match.group(2)) in _CV_DTYPES:
        return int(match.group(3)), np.dtype(_CV_DTYPES[(match.group(1), match.group(2))])
    raise UnsupportedEncoding(
        f'unsupported image encoding {shorten(encoding)}; supported: {", ".join(sorted(_RAW_LAYOUT))} '
        'and OpenCV types like 8UC1, 16UC1, 32FC1')


def _data_bytes(data: Any) -> np.ndarray:
    """The ``data`` field as a 1-D uint8 array (a view when the container exposes a buffer)."""
    if isinstance(data, np.ndarray):
        arr = data if data.dtype == np.uint8 else np.ascontiguousarray(data).view(np.uint8)
        return arr.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)) or hasattr(data, 'buffer_info'):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise MalformedImage(f'image data of type {type(data).__name__} is not a byte sequence: {exc}') from exc


def _raw_view(msg: Any, encoding: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``H x W x C`` view of the pixel buffer with the encoding's dtype and the message's byte order."""
    encoding = str(msg.encoding).strip() if encoding is None else encoding
    channels, dtype = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise MalformedImage(f'{encoding} image has no pixels: width={width}, height={height}')
    _check_pixels(width, height, max_pixels, f'{encoding} image')
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder('>' if int(getattr(msg, 'is_bigendian', 0)) else '<')
    row_bytes = width * channels * dtype.itemsize
    data = _data_bytes(msg.data)
    if step == 0 and data.size == height * row_bytes:
        _warn_once('step0', f'{encoding} image with step 0: reading its {data.size} bytes as packed rows of '
                   f'{row_bytes} bytes (fix the publisher: step must be the row length in bytes)')
        step = row_bytes
    if step < row_bytes:
        raise MalformedImage(
            f'{encoding} image step {step} is less than width*channels*bytes = {width}*{channels}*{dtype.itemsize} = {row_bytes}')
    if data.size < height * step:
        raise MalformedImage(
            f'{encoding} image data has {data.size} bytes, expected height*step = {height}*{step} = {height * step}')
    if encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv') and width % 2:
        raise MalformedImage(f'{encoding} image width must be even, got {width}')
    return np.ndarray((height, width, channels), dtype=dtype, buffer=data, offset=0,
                      strides=(step, channels * dtype.itemsize, dtype.itemsize))


_WARNED: set[str] = set()  # fixed keys only (bounded)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        LOGGER.warning(message)


def image_to_array(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Raw typed pixels of an Image: ``H x W`` for one channel, else ``H x W x C`` (native byte order).

    For depth ground truth (``32FC1`` metres, ``16UC1`` millimetres), masks (``mono8``) etc.
    Zero-copy for native byte order; big-endian data is converted. MalformedImage above ``max_pixels``.
    """
    view = _raw_view(msg, max_pixels=max_pixels)
    if not view.dtype.isnative:
        view = view.astype(view.dtype.newbyteorder('='))
    return view[..., 0] if view.shape[2] == 1 else view


DEPTH_ENCODINGS = ('16UC1', 'mono16', '32FC1')


def depth_to_metres(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A depth Image, or a CompressedImage of image_transport's ``compressedDepth`` plugin, in metres:
    ``H x W`` float32 with NaN where invalid (REP 118).

    ``16UC1`` / ``mono16``: millimetres, 0 = no data; ``32FC1``: metres, NaN, inf, 0 and negative
    values = no data. UnsupportedEncoding for any other encoding (naming it).
    """
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return compressed_depth_to_metres(msg, max_pixels)
    encoding = str(msg.encoding).strip()
    if encoding not in DEPTH_ENCODINGS:
        raise UnsupportedEncoding(f'depth image encoding {shorten(encoding)} is not a depth encoding; use '
                                  f'{", ".join(DEPTH_ENCODINGS)} (REP 118: 16UC1 millimetres, 32FC1 metres)')
    raw = image_to_array(msg, max_pixels)
    if raw.ndim != 2:
        raise MalformedImage(f'depth image has {raw.shape[2]} channels, expected 1')
    return _depth_metres(raw)


def _depth_metres(raw: np.ndarray) -> np.ndarray:
    """Millimetres (unsigned integers) or metres (floats) -> metres, NaN where there is no data."""
    if raw.dtype.kind == 'u':
        depth = raw.astype(np.float32) * np.float32(0.001)
    else:
        depth = raw.astype(np.float32, copy=True)
    depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


_DEPTH_HEADER = struct.Struct('<iff')  # image_transport compressedDepth: format (0: inverse depth), quantisation A, B


def compressed_depth_to_metres(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A CompressedImage of the ``compressedDepth`` transport (format ``"16UC1; compressedDepth png"`` or
    ``"32FC1; compressedDepth png"``, as ``ros2 bag record`` stores ``.../compressedDepth`` topics) in metres.

    The payload is a 12-byte header (format, two quantisation parameters) and a 16-bit PNG: millimetres
    for 16UC1, quantised inverse depth for 32FC1 (depth = A / (q - B), q = 0: no data).
    UnsupportedEncoding for other formats (the ``rvl`` codec included), MalformedImage for a bad payload.
    """
    fmt = str(getattr(msg, 'format', '')).strip()
    encoding, _, compression = fmt.partition(';')
    encoding, compression = encoding.strip(), compression.strip().lower()
    if encoding not in DEPTH_ENCODINGS or (compression and compression not in ('compresseddepth',
                                                                                'compresseddepth png')):
        raise UnsupportedEncoding(f'compressed depth format {shorten(fmt)} is not supported; use an Image topic or '
                                  'compressedDepth png of 16UC1 / 32FC1')
    data = _data_bytes(msg.data)
    if data.size <= _DEPTH_HEADER.size:
        raise MalformedImage(f'compressedDepth image (format {shorten(fmt)}) of {data.size} bytes has no image')
    _, quant_a, quant_b = _DEPTH_HEADER.unpack(data[:_DEPTH_HEADER.size].tobytes())
    payload = data[_DEPTH_HEADER.size:]
    kind, width, height = compressed_size(payload)
    _check_pixels(width, height, max_pixels, f'compressedDepth {kind} image')
    raw = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
        raise MalformedImage(f'compressedDepth payload (format {shorten(fmt)}) is not a one-channel 16-bit '
                             f'{kind} image')
    if encoding != '32FC1':
        return _depth_metres(raw)
    quantised = raw.astype(np.float32)
    with np.errstate(divide='ignore', invalid='ignore'):
        depth = np.float32(quant_a) / (quantised - np.float32(quant_b))
    depth[raw == 0] = np.nan
    return _depth_metres(depth)


def image_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an Image into ``H x W x 3`` uint8 RGB.

    Encodings: rgb8 (zero-copy view), bgr8, rgba8, bgra8, mono8/8UC1 (replicated),
    mono16/16UC1 and rgb16/bgr16/rgba16/bgra16 (high byte, as cv_bridge scales 16 -> 8 bit),
    bayer_{rggb,bggr,gbrg,grbg}8,
    yuv422/uyvy (UYVY), yuv422_yuy2/yuyv (YUYV). MalformedImage above ``max_pixels``.
    """
    encoding = str(msg.encoding).strip()
    if encoding not in _TO_RGB:
        raise UnsupportedEncoding(
            f'cannot convert image encoding {shorten(encoding)} to RGB; supported: {", ".join(RGB_ENCODINGS)}')
    view = _raw_view(msg, encoding, max_pixels)
    if encoding == 'rgb8':
        return view
    if view.dtype.itemsize == 2:
        view = (view.astype(np.uint16) >> 8).astype(np.uint8)
    code = _TO_RGB[encoding]
    if code is None:
        return view
    if view.shape[2] == 1:
        view = view[..., 0]
    return cv2.cvtColor(view, code)


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'IEND\xaeB`\x82'
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn markers (not DHT, JPG, DAC)
_TRAILER_SLACK = 64  # bytes after the end marker that some cameras append


def compressed_size(data: Any) -> tuple[str, int, int]:
    """``(format, width, height)`` of a JPEG or PNG payload from its header, without decoding.

    MalformedImage when the payload is neither, or its header is cut short or declares no size.
    """
    raw = memoryview(_data_bytes(data)).cast('B')
    if bytes(raw[:8]) == _PNG_SIGNATURE:
        if len(raw) < 24 or bytes(raw[12:16]) != b'IHDR':
            raise MalformedImage(f'PNG payload of {len(raw)} bytes has no IHDR header')
        width, height = struct.unpack('>II', raw[16:24])
        fmt = 'png'
    elif bytes(raw[:2]) == b'\xff\xd8':
        fmt, width, height = 'jpeg', 0, 0
        pos = 2
        while pos + 4 <= len(raw):
            if raw[pos] != 0xFF:
                raise MalformedImage(f'JPEG payload: no marker at byte {pos} before the frame header (SOFn)')
            marker = raw[pos + 1]
            if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte / marker without length
                pos += 1 if marker == 0xFF else 2
                continue
            length = struct.unpack('>H', raw[pos + 2:pos + 4])[0]
            if marker in _JPEG_SOF:
                if pos + 9 > len(raw) or length < 7:
                    break
                height, width = struct.unpack('>HH', raw[pos + 5:pos + 9])
                break
            if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                break
            pos += 2 + length
        else:
            raise MalformedImage(f'JPEG payload of {len(raw)} bytes ends before its frame header (SOFn)')
    else:
        raise MalformedImage(f'compressed payload of {len(raw)} bytes is neither JPEG nor PNG '
                             f'(starts with {bytes(raw[:8]).hex()})')
    if width <= 0 or height <= 0:
        raise MalformedImage(f'{fmt} header declares no size ({width}x{height})')
    return fmt, int(width), int(height)


_CODEC_LOCK = threading.Lock()
_CODEC_MARKERS = ('JPEG', 'libpng', 'grfmt', 'imgcodecs')  # lines printed by libjpeg, libpng, OpenCV's codecs


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what native code prints on file descriptor 2 meanwhile (one caller at a time)."""
    lines: list[str] = []
    with _CODEC_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read(1 << 16).decode(errors='replace').splitlines() if line.strip())


def compressed_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a CompressedImage (jpeg / png; ``format`` like ``"rgb8; jpeg compressed bgr8"``) to RGB.

    The size in the header is checked against ``max_pixels`` before decoding; payloads that are not
    complete JPEG / PNG files or that the codec reports as corrupt are MalformedImage (see module doc).
    """
    fmt = str(getattr(msg, 'format', '')).strip()
    if 'compresseddepth' in fmt.lower().replace(' ', ''):
        raise UnsupportedEncoding(f'compressed format {shorten(fmt)} (compressedDepth) is not a colour image; '
                                  'supported: jpeg and png colour images')
    data = _data_bytes(msg.data)
    if data.size == 0:
        raise MalformedImage(f'compressed image (format {shorten(fmt)}) has no data')
    kind, width, height = compressed_size(data)
    _check_pixels(width, height, max_pixels, f'{kind} image')
    tail = data[-_TRAILER_SLACK:].tobytes()
    if (kind == 'jpeg' and b'\xff\xd9' not in tail) or (kind == 'png' and _PNG_END not in tail):
        raise MalformedImage(f'{kind} image ({width}x{height}, {data.size} bytes) is cut short: no end marker')
    refused = []
    with _captured_stderr() as codec_output:
        try:
            bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        except cv2.error as error:  # e.g. OpenCV's own size limit (the backstop)
            bgr = None
            refused.append('OpenCV imgcodecs refused it: ' + str(error).strip().splitlines()[-1].split(') ', 1)[-1])
    codec_output += refused
    codec = [line for line in codec_output if any(m in line for m in _CODEC_MARKERS)]
    fatal = [line for line in codec if 'libpng warning' not in line]  # libpng warnings: image still complete
    other = [line for line in codec_output if line not in codec]
    if other:  # not the codec's (another thread's output): pass it on
        os.write(2, ('\n'.join(other) + '\n').encode())
    if bgr is None or fatal:
        reason = f': {shorten("; ".join(fatal), 200)}' if fatal else ''
        raise MalformedImage(f'{kind} image ({width}x{height}, {data.size} bytes) could not be decoded{reason}')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def message_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A sensor_msgs Image (:func:`image_to_rgb`) or CompressedImage (:func:`compressed_to_rgb`) as H x W x 3 RGB."""
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return compressed_to_rgb(msg, max_pixels)
    return image_to_rgb(msg, max_pixels)


def _check_rgb(rgb: Any) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f'expected an H x W x 3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}')
    return rgb


def _fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    return {
        'height': int(height),
        'width': int(width),
        'encoding': encoding,
        'is_bigendian': int(sys.byteorder == 'big' and array.dtype.itemsize > 1),
        'step': int(array.strides[0]),
        'data': array.reshape(-1).view(np.uint8),
    }


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = 'rgb8') -> dict[str, Any]:
    """Fields of a sensor_msgs/Image holding ``rgb`` (H x W x 3 uint8) in ``encoding``.

    ``encoding`` is one of rgb8, bgr8, rgba8, bgra8 (alpha 255), mono8. ``data`` is a
    contiguous 1-D uint8 array (assign it to rosbags messages as is; ``bytes(data)`` for rclpy).
    """
    rgb = _check_rgb(rgb)
    conversions = {'rgb8': None, 'bgr8': cv2.COLOR_RGB2BGR, 'rgba8': cv2.COLOR_RGB2RGBA,
                   'bgra8': cv2.COLOR_RGB2BGRA, 'mono8': cv2.COLOR_RGB2GRAY}
    if encoding not in conversions:
        raise UnsupportedEncoding(f'cannot write RGB as encoding {encoding!r}; supported: {", ".join(_WRITE_RGB)}')
    code = conversions[encoding]
    return _fields(rgb if code is None else cv2.cvtColor(rgb, code), encoding)


def array_to_image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """Fields of a sensor_msgs/Image holding ``array`` (H x W or H x W x C) as ``encoding``.

    The array's dtype and channel count must match the encoding (e.g. float32 H x W for
    ``32FC1``, uint16 for ``16UC1``/``mono16``, uint8 H x W x 3 for ``bgr8``).
    """
    channels, dtype = _layout(encoding)
    array = np.asarray(array)
    shape_channels = 1 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else -1)
    if shape_channels != channels or array.dtype.kind != dtype.kind or array.dtype.itemsize != dtype.itemsize:
        raise ValueError(f'array of shape {array.shape} dtype {array.dtype} does not match encoding {encoding!r} '
                         f'({channels} channel(s) of {dtype.name})')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f'array of shape {array.shape} has no pixels')
    return _fields(array.astype(array.dtype.newbyteorder('='), copy=False), encoding)


class CompressedData(NamedTuple):
    """``(format, data)`` of a CompressedImage; ``bytes(value)`` is the payload."""

    format: str
    data: bytes

    def __bytes__(self) -> bytes:
        return self.data


def encode_compressed(rgb: np.ndarray, fmt: str = 'jpeg', quality: int = 90) -> CompressedData:
    """Encode RGB as a CompressedImage payload: ``(format_string, bytes)``.

    ``fmt`` is ``jpeg`` (``quality`` 0-100) or ``png``. The format string follows
    image_transport's compressed plugin, e.g. ``"rgb8; jpeg compressed bgr8"``.
    """
    rgb = _check_rgb(rgb)
    fmt = fmt.lower()
    if fmt in ('jpeg', 'jpg'):
        ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        name = 'jpeg'
    elif fmt == 'png':
        ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        name = 'png'
    else:
        raise UnsupportedEncoding(f'unsupported compressed format {fmt!r}; supported: jpeg, png')
    if not ok:
        raise MalformedImage(f'OpenCV failed to encode a {rgb.shape} image as {name}')
    return CompressedData(f'rgb8; {name} compressed bgr8', buf.tobytes())


def encode_compressed_depth(depth: np.ndarray, encoding: str = '16UC1', depth_max: float = 10.0,
                            depth_quantization: float = 100.0) -> CompressedData:
    """Encode depth as image_transport's ``compressedDepth`` plugin does (png): ``16UC1`` millimetres
    (uint16) as they are, ``32FC1`` metres as quantised inverse depth with its parameters (``depth_max``,
    ``depth_quantization``: the plugin's defaults). For bags and tests; :func:`depth_to_metres` reads it."""
    if encoding == '16UC1':
        image = np.asarray(depth, dtype=np.uint16)
        quant_a = quant_b = 0.0
    elif encoding == '32FC1':
        metres = np.asarray(depth, dtype=np.float32)
        quant_a = depth_quantization * (depth_quantization + 1.0)
        quant_b = 1.0 - quant_a / depth_max
        with np.errstate(divide='ignore', invalid='ignore'):
            quantised = quant_a / metres + quant_b
        keep = np.isfinite(metres) & (metres > 0) & (metres < depth_max)
        image = np.where(keep, np.clip(quantised, 1, 65535), 0).astype(np.uint16)
    else:
        raise UnsupportedEncoding(f'compressedDepth encodes 16UC1 or 32FC1, not {shorten(encoding)}')
    ok, buf = cv2.imencode('.png', image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise MalformedImage(f'OpenCV failed to encode a {image.shape} depth image as png')
    header = _DEPTH_HEADER.pack(0, np.float32(quant_a), np.float32(quant_b))
    return CompressedData(f'{encoding}; compressedDepth png', header + buf.tobytes())


IMAGE_FILE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'bmp', 'ppm', 'tif', 'tiff', 'webp')
"""Image files the tools (``predict``) and INT8 calibration read from folders."""


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB; ValueError naming the file when unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f'{path}: no such file')
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ValueError(f'{path}: not a readable image')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` at ``width x height`` as the network sees it: area averaging when shrinking, else
    bilinear; the array itself when it already has that size."""
    if rgb.shape[:2] == (height, width):
        return rgb
    shrinking = rgb.shape[0] > height or rgb.shape[1] > width
    return cv2.resize(rgb, (int(width), int(height)), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
