"""Hostile-input probes of issue 22: each runs the real CLI (or the real reader) in a child process
and reports its exit code, the lines it printed on stderr, its peak memory and what it did.

    .venv/bin/python benchmarks/hostile_probes.py [--short] [--bomb-mib 1024] [--tf-messages 1000000]
        [--lock-attempts 4] [--repo PATH] [--only NAME ...] [--json OUT.json]

Probes (each names the file it plants in a temporary folder):

- ``cache_poisoning``: predict (OpenVINO) on checkpoint A fills the model cache; A's entry is copied
  under checkpoint B's key; predict on B must give B's depth (not A's) and warn once.
- ``metric_scale_cli`` / ``metric_scale_init``: ``finetune --pose-source tf --metric-scale 1e39`` and
  ``--init`` of a checkpoint recording ``metric_scale: 1e300`` (segfaulted: exit 139).
- ``metric_scale_<value>``: predict with a checkpoint recording metric_scale 1e30, 1e300, 1e-300, -1, NaN
  (published 2e29 m, non-finite, zeros, or silently relative depth).
- ``zip_bomb``: an ``encoder.pth`` of deflated zeros expanding to ``--bomb-mib`` MiB (peak RSS vs a
  normal predict); ``shared_refs``: a pickle field of 2^64 shared references; ``deep_json``: a
  ``hr_depth_ros.json`` nested 100,000 deep; ``odd_keys``: non-string state-dict keys;
  ``cache_unwritable``: ``predict --backend openvino --cache-dir`` under a file.
- ``output_lock``: a fine-tuning run, and ``--lock-attempts`` second invocations (fresh, --overwrite,
  --resume) on its output while it trains: refused, and the first run finishes all its steps.
- ``tf_flood``: ``--tf-messages`` tiny /tf messages into the TF tree of the data pipeline (bytes per
  message, per million: the memory a bag of them costs).
- ``resume``: a run whose best/ is newer than latest/ and whose metrics.csv has rows past latest/,
  resumed: best/ kept, no duplicate step rows.
- ``repeated_stamps``, ``mcap_chunk``, ``sqlite_page``: image stamps repeated, one corrupt MCAP chunk of
  six, a corrupt page in sqlite's messages table.

``--repo PATH`` runs the probes against another checkout (e.g. ``main`` before the fixes) for the
before/after table in benchmarks/RESULTS.md. Sizes are small by default so that the script runs on a
laptop in a few minutes; ``--short`` is smaller still.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
BAG_T0 = 1_700_000_000 * 10**9  # first stamp of the probes' image bags
PROBES: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {}


def probe(function: Callable[[argparse.Namespace, Path], dict[str, Any]]) -> Callable:
    PROBES[function.__name__] = function
    return function


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """The probed checkout (and this folder, for the helpers below) on the path; one thread; the probe's cache."""
    return dict(os.environ, PYTHONPATH=f'{args.repo}{os.pathsep}{Path(__file__).resolve().parent}',
                OMP_NUM_THREADS='1', HR_DEPTH_ROS_CACHE=str(args.cache))


def child(args: argparse.Namespace, argv: list[str], timeout: float = 300.0) -> dict[str, Any]:
    """Run ``python argv`` in ``args.repo``; exit code, stderr lines (last one kept), peak RSS (MB), seconds."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, *argv], cwd=args.repo, env=child_env(args), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        timed_out = True
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # max over the children so far: see peak_rss
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith('[finetune]')]
    return {'exit': process.returncode, 'timed_out': timed_out, 'seconds': round(time.monotonic() - start, 1),
            'stderr_lines': len(lines), 'traceback': 'Traceback' in err, 'last_line': (lines or [''])[-1][:300],
            'stdout': out, 'maxrss_children_mb': round(usage.ru_maxrss / 1024, 1)}


def peak_rss(args: argparse.Namespace, argv: list[str], timeout: float = 300.0) -> dict[str, Any]:
    """:func:`child` run through a wrapper that reports the child's own peak RSS (VmHWM)."""
    wrapper = textwrap.dedent('''
        import resource, runpy, sys
        sys.argv = sys.argv[1:]
        try:
            runpy.run_module(sys.argv[0], run_name='__main__')
        finally:
            sys.stdout.flush()
            print(f'PEAK_RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}', file=sys.stdout)
    ''')
    result = child(args, ['-c', wrapper, *argv], timeout)
    marker = [line for line in result['stdout'].splitlines() if line.startswith('PEAK_RSS_MB')]
    result['peak_rss_mb'] = float(marker[-1].split()[1]) if marker else None
    result.pop('maxrss_children_mb')
    return result


def python(args: argparse.Namespace, code: str, timeout: float = 300.0) -> dict[str, Any]:
    return child(args, ['-c', textwrap.dedent(code)], timeout)


def make_checkpoint(args: argparse.Namespace, folder: Path, seed: int = 0, **metadata: Any) -> Path:
    result = python(args, f'''
        import json, torch
        from pathlib import Path
        from hr_depth_ros.core.checkpoint import save_depth_checkpoint
        from hr_depth_ros.core.networks import build_depth_model
        torch.manual_seed({seed})
        encoder, decoder = build_depth_model('lite_hr_depth')
        folder = save_depth_checkpoint({str(folder)!r}, encoder, decoder, arch='lite_hr_depth', height=96, width=320)
        meta = json.loads((folder / 'hr_depth_ros.json').read_text())
        meta.update(json.loads({json.dumps(json.dumps(metadata))}))
        (folder / 'hr_depth_ros.json').write_text(json.dumps(meta))
    ''')
    assert result['exit'] == 0, result
    return folder


def edit_state(args: argparse.Namespace, path: Path, statement: str) -> None:
    """Load the state file ``path`` in a child, run ``statement`` on ``state``, save it back."""
    code = (f'import torch\nstate = torch.load({str(path)!r}, weights_only=True)\n{statement}\n'
            f'torch.save(state, {str(path)!r})\n')
    result = child(args, ['-c', code])
    assert result['exit'] == 0, result


def image(work: Path) -> Path:
    import cv2
    import numpy as np

    path = work / 'frame.png'
    if not path.exists():
        rng = np.random.default_rng(0)
        cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 256, (192, 640, 3), dtype=np.uint8), (0, 0), 5))
    return path


def predict(args: argparse.Namespace, work: Path, weights: Path, *extra: str, timeout: float = 300.0) -> dict:
    out = work / f'out_{weights.name}'
    return peak_rss(args, ['hr_depth_ros.tools.predict', str(image(work)), '--weights', str(weights),
                           '--output-dir', str(out), '--no-progress', *extra], timeout)


def depth_of(work: Path, weights: Path) -> Any:
    import numpy as np

    return np.load(work / f'out_{weights.name}' / 'frame_depth.npy')


def drive(args: argparse.Namespace, work: Path) -> Path:
    bag = work / 'drive'
    if not bag.exists():
        result = python(args, f'''
            from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag
            write_synthetic_bag({str(bag)!r}, frames={args.frames}, width=256, height=96, seed=2)
        ''')
        assert result['exit'] == 0, result
    return bag


def finetune(args: argparse.Namespace, work: Path, output: Path, *extra: str, timeout: float = 600.0,
             bag: Path | None = None) -> dict:
    """The finetune CLI on ``bag`` (default: the synthetic drive) at 128x64, batch 2, on the CPU."""
    bag = bag or drive(args, work)
    return peak_rss(args, ['hr_depth_ros.tools.finetune', '--bag', str(bag), '--output', str(output),
                           '--width', '128', '--height', '64', '--batch-size', '2', '--device', 'cpu', '--quiet',
                           *extra], timeout)


def summary(result: dict[str, Any], *keep: str) -> dict[str, Any]:
    """The fields of a child result a report shows."""
    fields = ('exit', 'stderr_lines', 'traceback', 'last_line', 'seconds', 'peak_rss_mb', 'timed_out', *keep)
    return {k: result[k] for k in fields if k in result}


def one_line_error(result: dict[str, Any]) -> bool:
    return result['exit'] not in (0, None) and result['exit'] > 0 and result['stderr_lines'] == 1 \
        and not result['traceback'] and not result['timed_out']


# --- probes ---------------------------------------------------------------------------------------------

@probe
def cache_poisoning(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np

    theirs = make_checkpoint(args, work / 'theirs', seed=1)
    ours = make_checkpoint(args, work / 'ours', seed=2)
    assert predict(args, work, theirs, '--backend', 'openvino')['exit'] == 0
    before = set(p.name for p in args.cache.iterdir())
    reference = predict(args, work, ours, '--backend', 'torch')
    expected = depth_of(work, ours)
    # our entry's key: build it in a scratch cache, then plant their entry under that name
    scratch = child(args, ['-c', textwrap.dedent(f'''
        import torch
        from hr_depth_ros.core.inference import DepthEstimator
        e = DepthEstimator({str(ours)!r}, device='cpu', backend='openvino', threads=1,
                           cache_dir={str(work / 'scratch')!r})
        print(e.runner.cache_entry.name)
    ''')])
    our_key = scratch['stdout'].strip().splitlines()[-1]
    planted = [name for name in before if not name.startswith('.')][0]
    shutil.copytree(args.cache / planted, args.cache / our_key)
    result = predict(args, work, ours, '--backend', 'openvino')
    got = depth_of(work, ours)
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    return {**summary(result), 'reference_exit': reference['exit'], 'ran_planted_model': error > 1e-2,
            'max_rel_difference_to_torch': round(error, 5), 'median_depth_got': round(float(np.median(got)), 4),
            'median_depth_true': round(float(np.median(expected)), 4),
            'warnings': result['stdout'].count('not built from these weights') + result['last_line'].count('not built'),
            'ok': result['exit'] == 0 and error < 1e-2}


@probe
def metric_scale_cli(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result = finetune(args, work, work / 'ms_cli', '--steps', '2', '--pose-source', 'tf', '--metric-scale', '1e39')
    return {**summary(result), 'ok': one_line_error(result) and result['exit'] != 139}


@probe
def metric_scale_init(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    init = make_checkpoint(args, work / 'init_1e300', metric_scale=1e300)
    result = finetune(args, work, work / 'ms_init', '--steps', '2', '--pose-source', 'tf', '--init', str(init))
    return {**summary(result), 'ok': one_line_error(result) and result['exit'] != 139}


@probe
def metric_scale_predict(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np

    report = {}
    for value in (1e30, 1e300, 1e-300, -1.0, float('nan')):
        weights = make_checkpoint(args, work / f'ms_{value}', metric_scale=value)
        result = predict(args, work, weights, '--backend', 'torch')
        depth = None
        if result['exit'] == 0:
            values = depth_of(work, weights)
            depth = {'finite_fraction': round(float(np.isfinite(values).mean()), 3),
                     'median_m': float(np.nanmedian(values)) if np.isfinite(values).any() else None}
        report[repr(value)] = {**summary(result), 'published_depth': depth, 'ok': one_line_error(result)}
    report['ok'] = all(entry['ok'] for entry in report.values())
    return report


@probe
def zip_bomb(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    normal = make_checkpoint(args, work / 'normal')
    baseline = predict(args, work, normal, '--backend', 'torch')
    bomb = work / 'bomb'
    shutil.copytree(normal, bomb)
    elements = args.bomb_mib << 18  # float32
    # The zeros come from a sparse file mapped into the tensor: the probe itself never holds them in RAM.
    result = python(args, f'''
        import os, shutil, zipfile, torch
        from pathlib import Path
        bomb = Path({str(bomb)!r})
        sparse = bomb.parent / 'zeros.bin'
        with open(sparse, 'wb') as f:
            f.truncate({elements} * 4)
        state = torch.load(bomb / 'encoder.pth', weights_only=True)
        state['padding'] = torch.from_file(str(sparse), shared=True, size={elements}, dtype=torch.float32)
        plain = bomb.parent / 'plain.pth'
        torch.save(state, plain)
        del state
        os.remove(sparse)
        with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb / 'encoder.pth', 'w', zipfile.ZIP_DEFLATED) as out:
            for info in source.infolist():
                with source.open(info) as src, out.open(info.filename, 'w', force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        os.remove(plain)
    ''', timeout=900)
    assert result['exit'] == 0, result
    size_mb = (bomb / 'encoder.pth').stat().st_size / 1e6
    attacked = predict(args, work, bomb, '--backend', 'torch')
    growth = attacked['peak_rss_mb'] - baseline['peak_rss_mb'] if attacked['peak_rss_mb'] else None
    return {**summary(attacked), 'file_mb': round(size_mb, 2), 'expands_to_mib': args.bomb_mib,
            'baseline_peak_rss_mb': baseline['peak_rss_mb'], 'rss_growth_mb': growth,
            'ok': one_line_error(attacked) and growth is not None and growth < 1000}


@probe
def shared_refs(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bad = make_checkpoint(args, work / 'shared_refs')
    edit_state(args, bad / 'encoder.pth', 'nested = [0]\nfor _ in range(64):\n    nested = [nested, nested]\n'
                                           "state['height'] = nested")
    attacked = predict(args, work, bad, '--backend', 'torch', timeout=args.hang_s)
    return {**summary(attacked), 'ok': one_line_error(attacked)}


@probe
def deep_json(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bad = make_checkpoint(args, work / 'deep_json')
    (bad / 'hr_depth_ros.json').write_text('{"a": ' + '[' * 100_000 + ']' * 100_000 + '}')
    result = predict(args, work, bad, '--backend', 'torch')
    init = finetune(args, work, work / 'deep_init', '--steps', '2', '--init', str(bad))
    return {**summary(result), 'init': summary(init), 'ok': one_line_error(result) and one_line_error(init)}


@probe
def odd_keys(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bad = make_checkpoint(args, work / 'odd_keys')
    edit_state(args, bad / 'depth.pth', 'state[7] = torch.zeros(1)')
    attacked = predict(args, work, bad, '--backend', 'torch')
    init = finetune(args, work, work / 'odd_init', '--steps', '2', '--init', str(bad))
    return {**summary(attacked), 'init': summary(init), 'ok': one_line_error(attacked) and one_line_error(init)}


@probe
def cache_unwritable(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    weights = make_checkpoint(args, work / 'plain')
    blocker = work / 'a_file'
    blocker.write_text('not a folder')
    result = predict(args, work, weights, '--backend', 'openvino', '--cache-dir', str(blocker / 'cache'))
    return {**summary(result), 'ok': one_line_error(result)}


@probe
def output_lock(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    output = work / 'locked_run'
    steps = args.lock_steps
    env = child_env(args)
    first = subprocess.Popen([sys.executable, '-m', 'hr_depth_ros.tools.finetune', '--bag', str(drive(args, work)),
                              '--output', str(output), '--width', '128', '--height', '64', '--batch-size', '2',
                              '--device', 'cpu', '--quiet', '--steps', str(steps), '--save-every', '2',
                              '--val-every', '5'], cwd=args.repo, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (output / 'latest').is_dir() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # until the first run is training (it has saved once)
    attempts = []
    variants = ([], ['--overwrite'], ['--resume'], [])
    for i in range(args.lock_attempts):
        result = finetune(args, work, output, '--steps', '4', *variants[i % len(variants)])
        attempts.append({**summary(result), 'names_pid': str(first.pid) in result['last_line']})
    alive = first.poll() is None  # else the attempts did not all meet a live run: inconclusive
    _, err = first.communicate(timeout=1800)
    try:
        step = json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())['step']
    except (OSError, ValueError, KeyError):
        step = None
    return {'first_run_exit': first.returncode, 'first_run_steps': step, 'steps_asked': steps,
            'first_run_error': [line for line in err.splitlines() if 'error' in line][:1],
            'attempts_refused_in_one_line': sum(one_line_error(a) for a in attempts),
            'attempts_naming_pid': sum(a['names_pid'] for a in attempts), 'attempts': len(attempts),
            'first_run_alive_after_attempts': alive,
            'ok': alive and first.returncode == 0 and step == steps and all(one_line_error(a) for a in attempts)}


@probe
def tf_flood(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result = python(args, f'''
        import time
        from types import SimpleNamespace as N
        from hr_depth_ros.core.tf_poses import TransformTree

        def rss():
            for line in open('/proc/self/status'):
                if line.startswith(('VmRSS', 'VmHWM')):
                    yield int(line.split()[1]) / 1024

        n = {args.tf_messages}
        stamp = N(sec=0, nanosec=0)
        header = N(stamp=stamp, frame_id='odom')
        translation, rotation = N(x=0.0, y=0.0, z=0.0), N(x=0.0, y=0.0, z=0.0, w=1.0)
        message = N(transforms=[N(header=header, child_frame_id='base_link',
                                  transform=N(translation=translation, rotation=rotation))])
        tree = TransformTree()
        before, _ = rss()
        start = time.perf_counter()
        for i in range(n):  # one message object rewritten: only what the tree keeps accumulates
            stamp.sec, stamp.nanosec = 1000 + i // 10000, (i % 10000) * 100000
            translation.x = i * 1e-4
            tree.add_message(message)
        tree.lookup('odom', 'base_link', [1000 * 10**9 + 5 * 10**8])
        after, peak = rss()
        print(f'{{n}} {{before:.1f}} {{after:.1f}} {{peak:.1f}} {{time.perf_counter() - start:.1f}}')
    ''', timeout=1800)
    n, before, after, peak, seconds = result['stdout'].split()
    per_million = (float(peak) - float(before)) / int(n) * 1e6
    return {'messages': int(n), 'rss_before_mb': float(before), 'rss_after_mb': float(after),
            'peak_rss_mb': float(peak), 'mb_per_million_messages': round(per_million, 1), 'seconds': float(seconds),
            'ok': per_million < 80}


@probe
def resume(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    output = work / 'resume_run'
    common = ('--save-every', '1', '--val-every', '2', '--log-every', '1')
    assert finetune(args, work, output, '--steps', '4', *common)['exit'] == 0
    result = python(args, f'''
        import json, torch
        from pathlib import Path
        out = Path({str(output)!r})
        meta = json.loads((out / 'best' / 'hr_depth_ros.json').read_text())
        meta['best_val_loss'] = 1e-9  # a best/ newer and better than what latest/ knows of
        (out / 'best' / 'hr_depth_ros.json').write_text(json.dumps(meta))
        state = torch.load(out / 'latest' / 'adam.pth', weights_only=True)
        state['best_val'] = 1e9
        torch.save(state, out / 'latest' / 'adam.pth')
        lines = (out / 'metrics.csv').read_text().splitlines()
        last = lines[-1].split(',')
        lines += [','.join([str(s), *last[1:]]) for s in (5, 6)]  # rows logged after latest/ before the crash
        (out / 'metrics.csv').write_text('\\n'.join(lines) + '\\n')
    ''')
    assert result['exit'] == 0, result
    best_before = (output / 'best' / 'encoder.pth').read_bytes()
    resumed = finetune(args, work, output, '--steps', '6', '--resume', *common)
    import csv
    with open(output / 'metrics.csv', newline='') as stream:
        keys = [(row['step'], row['split']) for row in csv.DictReader(stream)]
    duplicates = len(keys) - len(set(keys))
    kept = (output / 'best' / 'encoder.pth').read_bytes() == best_before
    return {**summary(resumed), 'best_kept': kept, 'duplicate_step_rows': duplicates,
            'ok': resumed['exit'] == 0 and kept and duplicates == 0}


@probe
def repeated_stamps(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result = python(args, f'''
        import shutil
        from pathlib import Path
        from rosbags.rosbag2 import Writer
        from rosbags.typesys import Stores, get_typestore
        from hr_depth_ros.core import bags
        from hr_depth_ros.core.training.data import DataConfig, extract_frames
        from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag
        work = Path({str(work)!r})
        source = write_synthetic_bag(work / 'rep_src', frames=20, width=128, height=64, seed=3, with_tf=False)
        typestore = get_typestore(Stores.LATEST)
        messages = list(bags.read_messages(source, ['/camera/image_raw', '/camera/camera_info']))
        images = [i for i, m in enumerate(messages) if m[0] == '/camera/image_raw']
        with Writer(work / 'repeated', version=9) as writer:
            connections = {{}}
            for index, (topic, t_ns, _, msg) in enumerate(messages):
                if index in images[5::5]:  # every 5th frame repeats the stamp of the frame before it
                    msg.header.stamp = messages[images[images.index(index) - 1]][3].header.stamp
                msgtype = 'sensor_msgs/msg/Image' if topic == '/camera/image_raw' else 'sensor_msgs/msg/CameraInfo'
                if topic not in connections:
                    connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
                writer.write(connections[topic], t_ns, typestore.serialize_cdr(msg, msgtype))
        store = extract_frames(DataConfig(bags=[work / 'repeated'], width=64, height=32, pose_source='net'))
        print(20 - len(store.stamps_ns), '|', ' | '.join(n for n in store.notes if 'stamp' in n))
        shutil.rmtree(store.folder)
    ''')
    dropped, _, note = (part.strip() for part in result['stdout'].strip().partition('|'))
    return {'frames': 20, 'dropped': int(dropped), 'reported': note[:200], 'ok': bool(note) and dropped in note}


def write_image_bag(path: Path, storage: str, frames: int, size: tuple[int, int]) -> Path:
    """A rosbag2 of ``frames`` random ``size`` (rows, columns) images on /camera/image_raw, 0.1 s apart
    (MCAP: zstd chunks, so that a corrupt chunk fails to decompress)."""
    import numpy as np
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from hr_depth_ros.core.image_decoding import rgb_to_image_fields

    typestore = get_typestore(Stores.LATEST)
    types = typestore.types
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3)
    if storage == 'mcap':
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        connection = writer.add_connection('/camera/image_raw', 'sensor_msgs/msg/Image', typestore=typestore)
        for i in range(frames):
            stamp = BAG_T0 + i * 10**8
            rgb = np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)
            header = types['std_msgs/msg/Header'](stamp=types['builtin_interfaces/msg/Time'](
                sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id='cam')
            msg = types['sensor_msgs/msg/Image'](header=header, **rgb_to_image_fields(rgb))
            writer.write(connection, stamp, typestore.serialize_cdr(msg, 'sensor_msgs/msg/Image'))
    return path


def corrupt_mcap_chunk(data_file: Path) -> int:
    """Overwrite the zstd frame header of the middle chunk of an MCAP file; returns the number of chunks."""
    data = bytearray(data_file.read_bytes())
    chunks, at = [], 8
    while at < len(data) and data[at] != 0x0F:  # records up to DataEnd: opcode, length, body
        if data[at] == 0x06:
            chunks.append(at)
        at += 9 + struct.unpack_from('<Q', data, at + 1)[0]
    body = chunks[len(chunks) // 2] + 9
    records = body + 32 + struct.unpack_from('<I', data, body + 28)[0] + 8  # after start/end/size/crc/compression
    data[records:records + 8] = b'\xff' * 8
    data_file.write_bytes(bytes(data))
    return len(chunks)


def corrupt_sqlite_messages(db3: Path) -> None:
    """Overwrite the root page of the messages table of a rosbag2 sqlite3 file."""
    with sqlite3.connect(db3) as db:
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
        page = db.execute('PRAGMA page_size').fetchone()[0]
    db.close()
    data = bytearray(db3.read_bytes())
    data[(root - 1) * page:root * page] = b'\xa5' * page
    db3.write_bytes(bytes(data))


def bag_in_child(args: argparse.Namespace, path: Path, storage: str, frames: int, size: tuple[int, int]) -> Path:
    result = python(args, f'''
        from hostile_probes import write_image_bag
        write_image_bag({str(path)!r}, {storage!r}, {frames}, {size})
    ''')
    assert result['exit'] == 0, result
    return path


@probe
def mcap_chunk(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bag = bag_in_child(args, work / 'mcap_bag', 'mcap', 12, (400, 640))
    chunks = corrupt_mcap_chunk(next(bag.glob('*.mcap')))
    result = python(args, f'''
        from hr_depth_ros.core import bags
        notes = []
        n = sum(1 for _ in bags.read_messages({str(bag)!r}, ['/camera/image_raw'], on_partial=notes.append))
        print(n, '|', notes[0] if notes else '')
    ''')
    read, _, note = (part.strip() for part in result['stdout'].strip().partition('|'))
    per_chunk = 12 / chunks
    return {'messages': 12, 'chunks': chunks, 'read': int(read), 'note': note[:240],
            'ok': int(read) >= 12 - per_chunk and 'corrupt chunk' in note}


@probe
def sqlite_page(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bag = bag_in_child(args, work / 'sqlite_bag', 'sqlite3', 12, (60, 80))
    corrupt_sqlite_messages(next(bag.glob('*.db3')))
    result = summary(finetune(args, work, work / 'sqlite_run', '--steps', '2', '--intrinsics', '50', '50', '40', '30',
                              bag=bag))
    result['says_corrupt'] = 'corrupt' in result['last_line']
    result['ok'] = one_line_error(result) and result['says_corrupt']
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--short', action='store_true', help='smaller sizes (the test-suite form)')
    parser.add_argument('--bomb-mib', type=int, default=1024, help='what the crafted encoder.pth expands to')
    parser.add_argument('--tf-messages', type=int, default=1_000_000, help='tiny /tf messages of the TF flood')
    parser.add_argument('--lock-attempts', type=int, default=4, help='second invocations on a live run')
    parser.add_argument('--lock-steps', type=int, default=60, help='steps of the run they try to disturb')
    parser.add_argument('--frames', type=int, default=16, help='frames of the synthetic drive runs train on')
    parser.add_argument('--hang-s', type=float, default=120.0, help='a child running longer than this hangs')
    parser.add_argument('--repo', type=Path, default=REPO, help='checkout to probe (default: this one)')
    parser.add_argument('--only', nargs='*', choices=sorted(PROBES), help='run only these probes')
    parser.add_argument('--json', help='also write the report here')
    args = parser.parse_args(argv)
    if args.short:
        args.bomb_mib, args.lock_attempts = 128, 2
    args.repo = args.repo.resolve()
    report: dict[str, Any] = {'repo': str(args.repo), 'commit': subprocess.run(
        ['git', '-C', str(args.repo), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}
    with tempfile.TemporaryDirectory(prefix='hostile_probes-') as folder:
        work = Path(folder)
        args.cache = work / 'model_cache'
        args.cache.mkdir()
        for name in args.only or PROBES:
            start = time.monotonic()
            try:
                report[name] = PROBES[name](args, work)
            except Exception as error:  # noqa: BLE001 - a probe that cannot run is reported, the rest go on
                report[name] = {'ok': False, 'probe_error': f'{type(error).__name__}: {error}'[:300]}
            report[name]['probe_s'] = round(time.monotonic() - start, 1)
            print(f'{name:20s} {"ok " if report[name]["ok"] else "FAIL"} '
                  f'{json.dumps({k: v for k, v in report[name].items() if k != "ok"})[:400]}', flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    failed = [name for name, entry in report.items() if isinstance(entry, dict) and not entry['ok']]
    print(f'{len(failed)} of {len(report) - 2} probes failed' + (f': {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
