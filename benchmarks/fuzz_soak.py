"""Fuzz and soak the depth node: malformed images, camera_info and compressed bombs, then steady load.

    .venv/bin/python benchmarks/fuzz_soak.py [--short] [--bad N] [--soak-s S] [--rate-hz R] [--seed S]
        [--json OUT.json]

Starts two real depth node processes (``/raw`` on sensor_msgs/Image, ``/compressed`` on
CompressedImage; random Lite-HR-Depth weights at 320x96, CPU) on loopback only
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a random ROS_DOMAIN_ID of its own, the large-data
Fast DDS profile) and, from this process:

1. fuzz: ``--bad`` malformed raw images (unique 2,000-character encodings, sizes that disagree
   with the data, 60000 x 60000 declared sizes, bad steps), ``--bad`` malformed compressed images
   (8000 x 8000 PNG / JPEG decompression bombs of a few KB, cut and corrupted JPEG/PNG, random
   bytes) and implausible camera_info (fx 1e-300, NaN, size 2^32-1, 1 x 1, wrong aspect ratio),
   with good frames in between (they must still be processed);
2. soak: good frames at ``--rate-hz`` for ``--soak-s`` seconds to both nodes.

It reports: crashes (node exits), bad inputs sent and counted by the node (``bad_frames``),
outputs published for bad input (must be 0), whether the good intrinsics survived the bad
camera_info, node RSS (start of fuzz, peak, end of soak), log lines / bytes / longest line and
codec lines printed outside the node's log, and the soak's processed rate. The process exits 1
when a check fails. Everything is bounded: message counts by ``--bad``, time by ``--soak-s``
and fixed timeouts. ``--short`` is the form the test suite runs (test/test_fuzz_soak.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hr_depth_ros.ros.transport import local_ros_env  # noqa: E402
from node_latency import machine_description, make_checkpoint, stop_process  # noqa: E402

WIDTH, HEIGHT = 320, 96
BAD_SEC = 100_000          # header.stamp.sec of every bad message (outputs with it are failures)
MAX_LOG_LINES_PER_MIN = 300
MAX_RSS_GROWTH_MB = 300.0
NODES = ('raw', 'compressed')
# Random bytes inside a JPEG's entropy-coded data can still decode without a codec warning (garbage
# pixels, not detectable without a checksum): published output for these is reported, not a failure.
MAY_DECODE = {'compressed:corrupt_jpeg'}


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MB, from /proc."""
    values = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        key, _, rest = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
            values[key] = int(rest.split()[0]) / 1024
    return values.get('VmRSS', 0.0), values.get('VmHWM', 0.0)


def bad_raw_images(rng: np.random.Generator, count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, Image fields) of malformed raw images."""
    kinds = ('unique_encoding', 'short_data', 'huge_declared', 'zero_size', 'small_step', 'odd_yuv', 'random')
    for i in range(count):
        kind = kinds[i % len(kinds)]
        h, w = int(rng.integers(1, 200)), int(rng.integers(1, 400))
        fields = dict(height=h, width=w, encoding='rgb8', is_bigendian=0, step=3 * w, data=bytes(3 * w * h))
        if kind == 'unique_encoding':
            fields['encoding'] = f'enc{i}-' + 'x' * 2000
        elif kind == 'short_data':
            fields['data'] = bytes(max(0, 3 * w * h - int(rng.integers(1, 3 * w * h + 1))))
        elif kind == 'huge_declared':
            fields.update(height=60000, width=60000, step=180000, data=bytes(64))
        elif kind == 'zero_size':
            fields.update(height=0, width=0, step=0, data=b'')
        elif kind == 'small_step':
            fields['step'] = int(rng.integers(1, 3 * w)) if w > 1 else 1
        elif kind == 'odd_yuv':
            fields.update(encoding='yuv422', width=w | 1, step=2 * (w | 1), data=bytes(2 * (w | 1) * h))
        else:  # random encoding and step, always less data than height x step
            step = int(rng.integers(0, 5000))
            fields.update(encoding=str(rng.choice(['rgb8', 'mono16', 'bayer_rggb8', '32FC1', '8UC9', ''])),
                          step=step, data=rng.bytes(int(rng.integers(0, max(1, h * step)))))
        yield kind, fields


def bad_compressed(rng: np.random.Generator, count: int, good_jpeg: bytes,
                   good_png: bytes) -> Iterator[tuple[str, str, bytes]]:
    """(kind, format, payload) of malformed compressed images, decompression bombs first."""
    import cv2

    bilevel = cv2.imencode('.png', np.zeros((8000, 8000), np.uint8), [cv2.IMWRITE_PNG_BILEVEL, 1])[1].tobytes()
    at = good_jpeg.index(b'\xff\xc0') + 5
    jpeg_bomb = good_jpeg[:at] + (8000).to_bytes(2, 'big') * 2 + good_jpeg[at + 4:]
    kinds = ('png_bomb', 'jpeg_bomb', 'cut_jpeg', 'cut_png', 'corrupt_jpeg', 'corrupt_png', 'random', 'soi_random',
             'empty')
    for i in range(count):
        kind = kinds[i % len(kinds)]
        middle = int(rng.integers(20, len(good_jpeg) - 60))
        payload = {
            'png_bomb': bilevel, 'jpeg_bomb': jpeg_bomb,
            'cut_jpeg': good_jpeg[:middle], 'cut_png': good_png[:int(rng.integers(30, len(good_png) - 20))],
            'corrupt_jpeg': good_jpeg[:middle] + rng.bytes(40) + good_jpeg[middle + 40:],
            'corrupt_png': good_png[:len(good_png) // 2] + rng.bytes(40) + good_png[len(good_png) // 2 + 40:],
            'random': rng.bytes(int(rng.integers(1, 4000))),
            'soi_random': b'\xff\xd8' + rng.bytes(int(rng.integers(1, 4000))),
            'empty': b'',
        }[kind]
        yield kind, 'jpeg' if 'png' not in kind else 'png', payload


def bad_camera_infos(K: np.ndarray) -> list[tuple[str, np.ndarray, int, int]]:
    """(kind, K, width, height) of implausible camera_info."""
    def with_(row: int, col: int, value: float) -> np.ndarray:
        out = K.copy()
        out[row, col] = value
        return out
    return [('fx_1e-300', with_(0, 0, 1e-300), WIDTH, HEIGHT), ('fy_nan', with_(1, 1, float('nan')), WIDTH, HEIGHT),
            ('size_2^32-1', K, 2**32 - 1, 2**32 - 1), ('size_1x1', K, 1, 1), ('aspect', K, WIDTH, WIDTH),
            ('cx_far', with_(0, 2, 1e6), WIDTH, HEIGHT), ('zero_K', np.zeros((3, 3)), WIDTH, HEIGHT)]


class Fuzzer:
    """In-process rclpy node (a GraphProbe): publishes to both depth nodes and records their outputs."""

    def __init__(self, domain_id: int) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_msgs.msg import String

        from hr_depth_ros.ros.probe import GraphProbe

        self.probe = GraphProbe('fuzzer', domain_id=domain_id)
        self.image_pub = self.probe.publisher(Image, '/raw/image')
        self.compressed_pub = self.probe.publisher(CompressedImage, '/compressed/image/compressed')
        self.info_pubs = {name: self.probe.publisher(CameraInfo, f'/{name}/camera_info') for name in NODES}
        for name in NODES:
            self.probe.subscribe(CameraInfo, f'/{name}/depth/camera_info', f'{name}/output',
                                 convert=lambda m: (int(m.header.stamp.sec), list(m.k)))
            self.probe.subscribe(String, f'/{name}/hr_depth/statistics', f'{name}/statistics',
                                 convert=lambda m: json.loads(m.data))

    def outputs(self, name: str) -> list[tuple[int, list[float]]]:
        """(stamp sec, K) of every depth/camera_info node ``name`` published."""
        return self.probe.received(f'{name}/output')

    def statistics(self, name: str) -> dict:
        """Node ``name``'s latest ~/statistics ({} before the first)."""
        return (self.probe.received(f'{name}/statistics') or [{}])[-1]

    def connected(self) -> bool:
        return self.probe.connected(self.image_pub, self.compressed_pub)

    def processed_by_all(self, sec: int) -> bool:
        """Whether every node published depth/camera_info for the frame stamped ``sec``."""
        return all(any(stamp == sec for stamp, _ in self.outputs(name)) for name in NODES)

    def close(self) -> None:
        self.probe.close()


class Harness:
    """Two depth nodes, the fuzzer, good frames and the counters of one run."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from hr_depth_ros.core.image_decoding import encode_compressed
        from hr_depth_ros.core.synthetic import SyntheticDrive

        self.args = args
        self.rng = np.random.default_rng(args.seed)
        drive = SyntheticDrive(width=WIDTH, height=HEIGHT, fps=10.0, seed=args.seed, num_frames=20)
        self.K = drive.K
        self.frames = [drive.frame(i).rgb for i in range(20)]
        self.jpegs = [encode_compressed(rgb, 'jpeg').data for rgb in self.frames]
        self.png = encode_compressed(self.frames[0], 'png').data
        weights = make_checkpoint('lite_hr_depth', WIDTH, HEIGHT, workdir / 'weights')
        env = local_ros_env()
        env.update(PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='0', RCUTILS_COLORIZED_OUTPUT='0',
                   OMP_NUM_THREADS='1')
        self.domain = int(env['ROS_DOMAIN_ID'])
        self.logs = {name: workdir / f'{name}.log' for name in NODES}
        self.procs: dict[str, subprocess.Popen] = {}
        for name in NODES:
            command = [sys.executable, '-m', 'hr_depth_ros.ros.depth_node', '--ros-args', '--params-file',
                       str(REPO / 'config' / 'depth.yaml'), '-p', f'weights:={weights}', '-p', 'device:=cpu',
                       '-p', f'image_transport:={name}', '-p', 'statistics_period:=0.5', '-p', 'qos_depth:=10',
                       '-r', f'__ns:=/{name}']
            with open(self.logs[name], 'wb') as handle:
                self.procs[name] = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                                    cwd=REPO)
        self.fuzzer = Fuzzer(self.domain)
        self.sent: dict[str, int] = {}
        self.kind_of: dict[tuple[str, int], str] = {}  # (node, stamp second) -> kind of bad input
        self.good_sec = 1
        self.rss: dict[str, dict[str, float]] = {name: {} for name in NODES}

    # -- helpers
    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if not all(self.alive().values()):
                return False
            time.sleep(0.05)
        return False

    def header(self, msg: Any, sec: int) -> Any:
        msg.header.stamp.sec, msg.header.frame_id = sec, 'camera_optical_frame'
        return msg

    def send_good(self, camera_info: bool = True) -> int:
        """One good frame (with its camera_info) to both nodes; returns its stamp second."""
        from sensor_msgs.msg import CompressedImage

        from hr_depth_ros.ros.ros_messages import camera_info_msg, rgb_image_msg, uint8_array

        self.good_sec += 1
        index = self.good_sec % len(self.frames)
        if camera_info:
            for pub in self.fuzzer.info_pubs.values():
                pub.publish(self.header(camera_info_msg(self.K, WIDTH, HEIGHT), self.good_sec))
        self.fuzzer.image_pub.publish(self.header(rgb_image_msg(self.frames[index]), self.good_sec))
        compressed = self.header(CompressedImage(format='rgb8; jpeg compressed bgr8'), self.good_sec)
        compressed.data = uint8_array(self.jpegs[index])
        self.fuzzer.compressed_pub.publish(compressed)
        return self.good_sec

    def good_round_trip(self, timeout: float = 60.0) -> bool:
        """Send good frames (every 2 s) until both nodes published depth for one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sec = self.send_good()
            if self.wait(lambda: self.fuzzer.processed_by_all(sec), min(2.0, deadline - time.monotonic())):
                return True
            if not all(self.alive().values()):
                return False
        return False

    def count(self, kind: str) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + 1

    def sample_rss(self, label: str) -> None:
        """RSS now under ``label`` (soak samples as soak_min / soak_max) and the peak so far."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                now, self.rss[name]['peak'] = rss_mb(proc.pid)
                if label == 'soak':
                    values = self.rss[name]
                    values['soak_min'] = min(now, values.get('soak_min', now))
                    values['soak_max'] = max(now, values.get('soak_max', now))
                else:
                    self.rss[name][label] = now

    # -- phases
    def fuzz(self) -> None:
        from sensor_msgs.msg import CompressedImage, Image

        from hr_depth_ros.ros.ros_messages import camera_info_msg, uint8_array

        pause = 1.0 / self.args.fuzz_rate_hz
        for i, (kind, fields) in enumerate(bad_raw_images(self.rng, self.args.bad)):
            msg = self.header(Image(), BAD_SEC + i)
            for key, value in fields.items():
                setattr(msg, key, uint8_array(value) if key == 'data' else value)
            self.fuzzer.image_pub.publish(msg)
            self.count(f'raw:{kind}')
            self.kind_of['raw', BAD_SEC + i] = f'raw:{kind}'
            time.sleep(pause)
        for i, (kind, fmt, payload) in enumerate(bad_compressed(self.rng, self.args.bad, self.jpegs[0], self.png)):
            msg = self.header(CompressedImage(format=fmt), BAD_SEC + i)
            msg.data = uint8_array(payload)
            self.fuzzer.compressed_pub.publish(msg)
            self.count(f'compressed:{kind}')
            self.kind_of['compressed', BAD_SEC + i] = f'compressed:{kind}'
            time.sleep(pause)
        for kind, K, width, height in bad_camera_infos(self.K):
            for pub in self.fuzzer.info_pubs.values():
                msg = camera_info_msg(np.eye(3), 1, 1)
                msg.k, msg.width, msg.height = [float(v) for v in K.ravel()], int(width), int(height)
                pub.publish(self.header(msg, BAD_SEC))
            self.count(f'camera_info:{kind}')
            time.sleep(0.05)

    def soak(self) -> dict[str, Any]:
        start = time.monotonic()
        before = {name: self.fuzzer.statistics(name) for name in NODES}
        sent = 0
        while time.monotonic() - start < self.args.soak_s and all(self.alive().values()):
            self.send_good(camera_info=False)
            sent += 1
            if sent % max(1, int(self.args.rate_hz)) == 0:
                self.sample_rss('soak')
            time.sleep(max(0.0, start + sent / self.args.rate_hz - time.monotonic()))
        elapsed = time.monotonic() - start
        time.sleep(1.5)  # the last statistics
        after = {name: self.fuzzer.statistics(name) for name in NODES}
        return {'frames_sent': sent, 'seconds': round(elapsed, 1),
                'processed_hz': {n: round((after.get(n, {}).get('processed', 0) - before[n].get('processed', 0))
                                          / max(elapsed, 1e-6), 2) for n in NODES}}

    def log_summary(self) -> dict[str, Any]:
        summary = {}
        for name, path in self.logs.items():
            text = path.read_text(errors='replace')
            lines = text.splitlines()
            node_lines = [line for line in lines if line.startswith('[')]
            summary[name] = {
                'lines': len(lines), 'bytes': len(text.encode()), 'longest_line': max(map(len, lines), default=0),
                'warn_or_error': sum(1 for line in node_lines if '[WARN]' in line or '[ERROR]' in line),
                'codec_lines_outside_log': sum(1 for line in lines if not line.startswith('[') and any(
                    marker in line for marker in ('libpng', 'JPEG', 'grfmt', 'imgcodecs'))),
                'size_limit_lines': sum(1 for line in lines if 'above the limit' in line),
                'camera_info_lines': sum(1 for line in lines if 'camera_info' in line and '[WARN]' in line),
            }
        return summary

    def close(self) -> dict[str, int | None]:
        self.fuzzer.close()
        codes = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                code = stop_process(proc)
                codes[name] = 0 if code in (0, -2) else code
            else:
                codes[name] = proc.returncode  # exited by itself: a crash
        return codes


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole fuzz + soak run; returns the report (``checks`` maps each check to pass/fail)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='fuzz_soak_') as tmp:
        harness = Harness(args, Path(tmp))
        report: dict[str, Any] = {'domain_id': harness.domain, 'settings': vars(args)}
        try:
            up = harness.wait(harness.fuzzer.connected, 120.0) and harness.good_round_trip(120.0)
            report['started'] = up
            if up:
                harness.sample_rss('before_fuzz')
                fuzz_start = time.monotonic()
                harness.fuzz()
                report['fuzz_seconds'] = round(time.monotonic() - fuzz_start, 1)
                report['good_after_fuzz'] = harness.good_round_trip(60.0)
                harness.sample_rss('after_fuzz')
                report['good_K_kept'] = all(
                    np.allclose(k, harness.K.ravel()) for n in NODES for sec, k in harness.fuzzer.outputs(n)[-1:])
                report['bad_frames_counted'] = {n: harness.fuzzer.statistics(n).get('bad_frames') for n in NODES}
                report['soak'] = harness.soak()
                harness.sample_rss('end')
        finally:
            report['logs'] = harness.log_summary()
            report['exit_codes'] = harness.close()
        published = [harness.kind_of.get((n, sec), f'{n}:camera_info') for n in NODES
                     for sec, _ in harness.fuzzer.outputs(n) if sec >= BAD_SEC]
        report['outputs_for_bad_input'] = sum(1 for kind in published if kind not in MAY_DECODE)
        report['bad_input_published'] = {kind: published.count(kind) for kind in sorted(set(published))}
        report['bad_inputs_sent'] = dict(sorted(harness.sent.items()))
        report['rss_mb'] = {n: {k: round(v, 1) for k, v in values.items()} for n, values in harness.rss.items()}
    minutes = max(1.0, (time.monotonic() - started) / 60.0)
    growth = {n: values.get('end', 0.0) - values.get('after_fuzz', values.get('end', 0.0))
              for n, values in report['rss_mb'].items()}
    report['rss_growth_during_soak_mb'] = {n: round(v, 1) for n, v in growth.items()}
    report['checks'] = {
        'nodes started and processed a good frame': bool(report.get('started')),
        'no crash': all(code == 0 for code in report['exit_codes'].values()),
        'good frames processed after the fuzz': bool(report.get('good_after_fuzz')),
        'no output for bad input': report['outputs_for_bad_input'] == 0,
        'good intrinsics kept': bool(report.get('good_K_kept')),
        'bombs refused by the size limit': all(report['logs'][n]['size_limit_lines'] > 0 for n in NODES),
        'log bounded': all(v['lines'] <= MAX_LOG_LINES_PER_MIN * minutes and v['longest_line'] < 2000
                           for v in report['logs'].values()),
        'no codec noise outside the log': all(v['codec_lines_outside_log'] == 0 for v in report['logs'].values()),
        f'RSS growth during soak < {MAX_RSS_GROWTH_MB:.0f} MB': all(v < MAX_RSS_GROWTH_MB for v in growth.values()),
    }
    report['total_seconds'] = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--short', action='store_true', help='the test-suite form: --bad 60 --soak-s 5')
    parser.add_argument('--bad', type=int, default=2000, help='malformed raw and compressed images each')
    parser.add_argument('--fuzz-rate-hz', type=float, default=200.0, help='rate of the malformed messages')
    parser.add_argument('--soak-s', type=float, default=120.0, help='seconds of good frames after the fuzz')
    parser.add_argument('--rate-hz', type=float, default=10.0, help='rate of the soak frames')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', help='also write the report here')
    args = parser.parse_args(argv)
    if args.short:
        args.bad, args.soak_s = min(args.bad, 60), min(args.soak_s, 5.0)
    if args.bad < 1 or args.soak_s < 0 or args.rate_hz <= 0 or args.fuzz_rate_hz <= 0:
        parser.error('need --bad >= 1, --soak-s >= 0, positive rates')
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(f'Machine: {machine_description()}')
    print(f"fuzz + soak in {report['total_seconds']} s on ROS_DOMAIN_ID {report['domain_id']} (loopback)")
    print(f"bad inputs sent: {sum(report['bad_inputs_sent'].values())} "
          f"({', '.join(f'{k} {v}' for k, v in report['bad_inputs_sent'].items())})")
    print(f"bad frames counted by the nodes: {report.get('bad_frames_counted')}; soak: {report.get('soak')}")
    print(f"RSS MB: {report['rss_mb']}; logs: {report['logs']}")
    for check, ok in report['checks'].items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    return 0 if all(report['checks'].values()) else 1


if __name__ == '__main__':
    sys.exit(main())
