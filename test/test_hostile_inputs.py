"""Hostile inputs, second pass (issue 22): a poisoned model cache, implausible metric scales, small files
that expand to gigabytes, a second run on a live output folder, TF floods, and the smaller items."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hr_depth_ros.core import bags
from hr_depth_ros.core.backends import openvino_version
from hr_depth_ros.core.checkpoint import CheckpointError, load_depth_checkpoint, save_depth_checkpoint
from hr_depth_ros.core.networks import build_depth_model
from hr_depth_ros.core.tf_poses import TransformTree
from hr_depth_ros.tools import finetune, predict
from hr_depth_ros.tools.make_synthetic_bag import write_synthetic_bag
from test_backends import tiny_net

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))
from hostile_probes import BAG_T0, corrupt_mcap_chunk, corrupt_sqlite_messages, write_image_bag  # noqa: E402
needs_openvino = pytest.mark.skipif(openvino_version() is None, reason='openvino is not installed')
COMMON = ['--width', '128', '--height', '64', '--batch-size', '2', '--device', 'cpu', '--quiet', '--save-every', '1',
          '--val-every', '2', '--log-every', '1']


@pytest.fixture(scope='module')
def small_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    encoder, decoder = build_depth_model('lite_hr_depth')
    return save_depth_checkpoint(tmp_path_factory.mktemp('ckpt') / 'lite', encoder, decoder, arch='lite_hr_depth',
                                 height=64, width=128)


def copy_with_metadata(source: Path, target: Path, **fields) -> Path:
    shutil.copytree(source, target)
    metadata = json.loads((target / 'hr_depth_ros.json').read_text())
    metadata.update(fields)
    (target / 'hr_depth_ros.json').write_text(json.dumps(metadata))
    return target


def one_line(text: str) -> bool:
    return text.strip().count('\n') == 0 and 'Traceback' not in text


# --- 1. the model cache: an entry is bound to the weights it was built from ---------------------------

@needs_openvino
def test_a_planted_cache_entry_of_other_weights_is_rebuilt_not_run(tmp_path, caplog):
    from hr_depth_ros.core.backends import OpenVINOBackend

    theirs, ours = tiny_net(-4.0), tiny_net(2.0)  # outputs ~0.02 vs ~0.88
    planted = OpenVINOBackend(theirs, 'tiny', 64, 32, threads=1, cache_dir=tmp_path).cache_entry
    probe = OpenVINOBackend(ours, 'tiny', 64, 32, threads=1, cache_dir=tmp_path / 'probe')
    our_key = probe.cache_entry.name
    shutil.copytree(planted, tmp_path / our_key)  # the attacker's copy under our weights' key
    with caplog.at_level(logging.WARNING):
        backend = OpenVINOBackend(ours, 'tiny', 64, 32, threads=1, cache_dir=tmp_path)
    images = torch.rand(1, 3, 32, 64)
    np.testing.assert_allclose(backend(images).numpy(), ours(images).detach().numpy(), atol=1e-5)
    assert backend.converted_s is not None  # rebuilt, not "loaded from the cache"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and our_key in r.getMessage()]
    assert len(warnings) == 1
    again = OpenVINOBackend(ours, 'tiny', 64, 32, threads=1, cache_dir=tmp_path)
    assert again.converted_s is None  # the rebuilt entry is ours and is used from now on


# --- 2. / 3. metric_scale: one range check for the CLI, the node parameter and checkpoint metadata -------

@pytest.mark.parametrize('value', [1e39, 1e30, 1e-300, 0.0, -2.0, math.nan, math.inf, True, 'metres', [1.0]])
def test_implausible_metric_scales_are_refused_naming_the_source(value):
    from hr_depth_ros.core.checkpoint import check_metric_scale

    with pytest.raises(ValueError, match='from the file') as error:
        check_metric_scale(value, 'from the file')
    assert 'metric_scale' in str(error.value)


def test_plausible_metric_scales_pass():
    from hr_depth_ros.core.checkpoint import check_metric_scale

    assert check_metric_scale(55.07, 'x') == 55.07 and check_metric_scale(1, 'x') == 1.0


@pytest.mark.parametrize('value', [1e30, 1e300, 1e-300, -1.0, math.nan])
def test_a_checkpoint_with_an_implausible_metric_scale_is_refused(small_checkpoint, tmp_path, value):
    bad = copy_with_metadata(small_checkpoint, tmp_path / 'bad', metric_scale=value)
    with pytest.raises(CheckpointError, match='metric_scale') as error:
        load_depth_checkpoint(bad)
    assert str(bad / 'hr_depth_ros.json') in str(error.value)


@pytest.fixture(scope='module')
def ros_domain() -> int:
    from hr_depth_ros.ros.transport import local_ros_env

    return int(local_ros_env()['ROS_DOMAIN_ID'])


@pytest.fixture(scope='module')
def drive(tmp_path_factory) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp('drive') / 'drive', frames=16, width=256, height=96, seed=2)


def test_finetune_refuses_an_absurd_metric_scale_in_one_line(drive, small_checkpoint, tmp_path, capsys):
    """Issue 22 item 2: --metric-scale 1e39 (and --init with metric_scale 1e300) died with exit 139."""
    code = finetune.main(['--bag', str(drive), '--output', str(tmp_path / 'a'), *COMMON, '--steps', '2',
                          '--pose-source', 'tf', '--metric-scale', '1e39'])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and 'metric_scale' in err and '1e+39' in err
    init = copy_with_metadata(small_checkpoint, tmp_path / 'init', metric_scale=1e300)
    code = finetune.main(['--bag', str(drive), '--output', str(tmp_path / 'b'), *COMMON, '--steps', '2',
                          '--pose-source', 'tf', '--init', str(init)])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and str(init / 'hr_depth_ros.json') in err
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()  # nothing left behind


def test_node_refuses_an_implausible_metric_scale_and_takes_intrinsics_one_by_one(small_checkpoint, tmp_path,
                                                                                 ros_domain):
    """Item 3: 1e30 published 2e29 m depth, negative or NaN silently fell back to relative depth.
    Item 7: fx, fy, cx, cy could only be set all at once at runtime."""
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from hr_depth_ros.ros.depth_node import SUCCESS, DepthNode

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        for index, value in enumerate((1e30, -1.0, math.nan)):
            bad = copy_with_metadata(small_checkpoint, tmp_path / f'bad{index}', metric_scale=value)
            node = DepthNode(context=context, parameter_overrides=[
                Parameter('weights', value=str(bad)), Parameter('device', value='cpu'),
                Parameter('backend', value='torch'), Parameter('threads', value=1),
                Parameter('autostart', value=False)])
            assert node.trigger_configure() != SUCCESS and node.engine is None, value
            node.destroy_node()
        good = copy_with_metadata(small_checkpoint, tmp_path / 'good', metric_scale=12.5)
        node = DepthNode(context=context, parameter_overrides=[
            Parameter('weights', value=str(good)), Parameter('device', value='cpu'),
            Parameter('backend', value='torch'), Parameter('threads', value=1), Parameter('autostart', value=False)])
        assert node.trigger_configure() == SUCCESS and node.engine.estimator.metric_scale == 12.5
        rgb = np.full((64, 128, 3), 90, np.uint8)
        assert node.engine.process(rgb).intrinsics_source != 'parameters'
        for name, value in (('fx', 100.0), ('fy', 110.0), ('cx', 60.0)):
            result = node.set_parameters([Parameter(name, value=value)])[0]
            assert result.successful, result.reason
            assert node.engine.process(rgb).intrinsics_source != 'parameters'  # not all four yet
        assert node.set_parameters([Parameter('cy', value=30.0)])[0].successful
        result = node.engine.process(rgb)
        assert result.intrinsics_source == 'parameters' and result.K[1, 1] == 110.0
        node.trigger_shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


# --- 4. small files that expand to gigabytes ---------------------------------------------------------------

def deflated(path: Path) -> None:
    """Rewrite a torch.save zip with every member deflate-compressed (what an attacker does to zeros)."""
    with zipfile.ZipFile(path) as source:
        members = [(info.filename, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as target:
        for name, data in members:
            target.writestr(name, data)


def test_a_compressed_state_file_is_refused_before_it_is_read(small_checkpoint, tmp_path, monkeypatch):
    """Item 4: an 11.5 MB encoder.pth holding 1 GiB of deflated zeros took predict to 3.4 GB."""
    bomb = tmp_path / 'bomb'
    shutil.copytree(small_checkpoint, bomb)
    state = torch.load(bomb / 'encoder.pth', weights_only=True)
    state['padding'] = torch.zeros(32 << 20)  # 128 MiB of zeros: ~130 kB deflated
    torch.save(state, bomb / 'encoder.pth')
    del state
    deflated(bomb / 'encoder.pth')  # the random weights barely compress: ~10 MB holding ~140 MB
    assert (bomb / 'encoder.pth').stat().st_size < (128 << 20) / 4
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, 'load', lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    with pytest.raises(CheckpointError) as error:
        load_depth_checkpoint(bomb)
    assert str(bomb / 'encoder.pth') in str(error.value)
    assert not [p for p in loads if Path(p).name == 'encoder.pth']  # refused before torch expanded it


def test_a_state_file_torch_wrote_still_loads(small_checkpoint):
    assert load_depth_checkpoint(small_checkpoint).width == 128


def test_a_self_referencing_pickle_field_is_refused_quickly(small_checkpoint, tmp_path):
    """Item 4: a field of shared references (normal file size) grew without bound when formatted."""
    bad = tmp_path / 'shared'
    shutil.copytree(small_checkpoint, bad)
    state = torch.load(bad / 'encoder.pth', weights_only=True)
    nested: list = [0]
    for _ in range(64):
        nested = [nested, nested]  # 2^64 leaves when walked or printed, a few kB on disk
    state['height'] = nested
    torch.save(state, bad / 'encoder.pth')
    code = (f'from hr_depth_ros.core.checkpoint import load_depth_checkpoint, CheckpointError\n'
            f'try:\n    load_depth_checkpoint({str(bad)!r})\nexcept CheckpointError as e:\n    print("refused", e)\n')
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail('loading a checkpoint with a self-referencing field did not finish in 60 s')
    assert done.returncode == 0 and done.stdout.startswith('refused') and str(bad / 'encoder.pth') in done.stdout
    assert time.monotonic() - start < 60


def test_deep_json_and_odd_keys_are_one_line_errors(small_checkpoint, tmp_path, capsys):
    """Item 7: RecursionError / TypeError tracebacks from predict and --init."""
    deep = tmp_path / 'deep'
    shutil.copytree(small_checkpoint, deep)
    (deep / 'hr_depth_ros.json').write_text('{"a": ' + '[' * 100_000 + ']' * 100_000 + '}')
    with pytest.raises(CheckpointError, match='hr_depth_ros.json'):
        load_depth_checkpoint(deep)
    odd = tmp_path / 'odd'
    shutil.copytree(small_checkpoint, odd)
    state = torch.load(odd / 'depth.pth', weights_only=True)
    state[7] = torch.zeros(1)
    state[(1, 2)] = torch.zeros(1)
    torch.save(state, odd / 'depth.pth')
    with pytest.raises(CheckpointError, match='depth.pth'):
        load_depth_checkpoint(odd)
    image = tmp_path / 'frame.png'
    import cv2
    cv2.imwrite(str(image), np.full((64, 128, 3), 80, np.uint8))
    for weights in (deep, odd):
        assert predict.main([str(image), '--weights', str(weights), '--no-progress', '--backend', 'torch']) == 2
        err = capsys.readouterr().err
        assert one_line(err) and str(weights) in err


@needs_openvino
def test_predict_with_an_unwritable_cache_is_one_line(small_checkpoint, tmp_path, capsys):
    """Item 7: predict --backend openvino --cache-dir <read-only> ended in an OSError traceback."""
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')  # works as root too, where a read-only mode would not stop a write
    image = tmp_path / 'frame.png'
    import cv2
    cv2.imwrite(str(image), np.full((64, 128, 3), 80, np.uint8))
    code = predict.main([str(image), '--weights', str(small_checkpoint), '--no-progress', '--backend', 'openvino',
                         '--cache-dir', str(blocker / 'cache')])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and str(blocker) in err


# --- 5. one run per output folder ------------------------------------------------------------------------

# A live run as the lock protocol sees it (README: flock on OUTPUT/.hr_depth_ros.lock, holding the PID).
HOLDER = textwrap.dedent('''
    import fcntl, os, sys, time
    with open(os.path.join(sys.argv[1], '.hr_depth_ros.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(f'{os.getpid()}\\n')
        lock.flush()
        print('locked', flush=True)
        time.sleep(60)
''')


def test_a_second_run_on_a_live_output_is_refused_untouched(drive, tmp_path, capsys):
    """Item 5: the refused second run deleted the live run's staging and frame-cache folders."""
    output = tmp_path / 'out'
    live = [output / '.hr_depth_frames-live', output / '.latest.tmp-live', output / '.best.old-live']
    for folder in live:
        folder.mkdir(parents=True)
        (folder / 'data').write_bytes(b'x' * 100)
    holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(output)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        for extra in ([], ['--overwrite'], ['--resume']):
            code = finetune.main(['--bag', str(drive), '--output', str(output), *COMMON, '--steps', '2', *extra])
            err = capsys.readouterr().err
            assert code == 2 and one_line(err) and str(holder.pid) in err and str(output) in err
            assert all((folder / 'data').read_bytes() == b'x' * 100 for folder in live)
    finally:
        holder.kill()
        holder.wait()
    from hr_depth_ros.core.training.output import output_lock

    with output_lock(output):  # the lock died with its holder: the next run gets the folder
        assert (output / '.hr_depth_ros.lock').read_text().strip() == str(os.getpid())
    assert not (output / '.hr_depth_ros.lock').exists()


# --- 6. TF floods ----------------------------------------------------------------------------------------

def tf_message(i: int):
    stamp = SimpleNamespace(sec=1000 + i // 1000, nanosec=(i % 1000) * 1_000_000)
    return SimpleNamespace(transforms=[SimpleNamespace(
        header=SimpleNamespace(stamp=stamp, frame_id='odom'), child_frame_id='base_link',
        transform=SimpleNamespace(translation=SimpleNamespace(x=i * 1e-3, y=0.0, z=0.0),
                                  rotation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0)))])


def test_tf_samples_are_stored_compactly():
    """Item 6: +240 MB per million /tf messages (a 2 GB bag of 12.5 M tiny messages peaked at 7.4 GB)."""
    messages = 50_000
    tree = TransformTree()
    tracemalloc.start()
    try:
        for i in range(messages):
            tree.add_message(tf_message(i))
        lookup = tree.lookup('odom', 'base_link', [1010 * 10**9 + 5 * 10**8])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(lookup.poses[0, 0, 3], 10.5, atol=1e-9)
    assert peak / messages < 80  # bytes per message, lookup included (was ~340)


# --- 7. resume, repeated stamps, corrupt bags ------------------------------------------------------------

def rows(path: Path) -> list[dict]:
    with open(path, newline='') as stream:
        return list(csv.DictReader(stream))


def test_resume_keeps_the_best_score_and_writes_each_step_once(drive, tmp_path):
    """Item 7: after --resume the best score came from latest/ (a worse model overwrote best/), and
    metrics.csv got the steps logged after latest/ twice. Here: a crash after best/ was saved with a
    better score than latest/ knows of, and after rows of steps 3-4 were logged."""
    output = tmp_path / 'out'
    fast = [*COMMON, '--save-every', '2']  # saves (and validates) at steps 2 and 4 only
    assert finetune.main(['--bag', str(drive), '--output', str(output), *fast, '--steps', '2']) == 0
    best_meta = json.loads((output / 'best' / 'hr_depth_ros.json').read_text())
    best_meta['best_val_loss'] = 1e-9
    (output / 'best' / 'hr_depth_ros.json').write_text(json.dumps(best_meta))
    state = torch.load(output / 'latest' / 'adam.pth', weights_only=True)
    state['best_val'] = 1e9
    torch.save(state, output / 'latest' / 'adam.pth')
    best_weights = (output / 'best' / 'encoder.pth').read_bytes()
    lines = (output / 'metrics.csv').read_text().splitlines()
    last = lines[-1].split(',')
    for step in (3, 4):
        lines.append(','.join([str(step), *last[1:]]))
    (output / 'metrics.csv').write_text('\n'.join(lines) + '\n')
    assert finetune.main(['--bag', str(drive), '--output', str(output), *fast, '--steps', '4', '--resume']) == 0
    assert (output / 'best' / 'encoder.pth').read_bytes() == best_weights
    keys = [(r['step'], r['split']) for r in rows(output / 'metrics.csv')]
    assert len(keys) == len(set(keys)) and ('4', 'train') in keys and ('4', 'val') in keys


def test_repeated_image_stamps_are_counted(tmp_path):
    from hr_depth_ros.core.training.data import DataConfig, extract_frames

    source = write_synthetic_bag(tmp_path / 'src', frames=10, width=128, height=64, seed=3, with_tf=False)
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.LATEST)
    messages = list(bags.read_messages(source, ['/camera/image_raw', '/camera/camera_info']))
    images = [index for index, message in enumerate(messages) if message[0] == '/camera/image_raw']
    with Writer(tmp_path / 'repeated', version=9) as writer:
        connections = {}
        for index, (topic, t_ns, _, msg) in enumerate(messages):
            if index in (images[2], images[5]):  # frames 2 and 5 repeat the stamps of frames 1 and 4
                msg.header.stamp = messages[images[images.index(index) - 1]][3].header.stamp
            msgtype = 'sensor_msgs/msg/Image' if topic == '/camera/image_raw' else 'sensor_msgs/msg/CameraInfo'
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(connections[topic], t_ns, typestore.serialize_cdr(msg, msgtype))
    store = extract_frames(DataConfig(bags=[tmp_path / 'repeated'], width=64, height=32, pose_source='net'))
    try:
        assert len(store.stamps_ns) == 8
        assert any('2 frames' in note and 'stamp' in note and 'repeated' in note for note in store.notes)
    finally:
        shutil.rmtree(store.folder, ignore_errors=True)


def test_a_corrupt_mcap_chunk_is_skipped_and_counted(tmp_path):
    bag = write_image_bag(tmp_path / 'bag', 'mcap', frames=12, size=(400, 640))  # ~2 images per 1 MB chunk
    chunks = corrupt_mcap_chunk(next(bag.glob('*.mcap')))  # the middle one
    assert chunks >= 4
    notes: list[str] = []
    stamps = [stamp for _, _, stamp, _ in bags.read_messages(bag, ['/camera/image_raw'], on_partial=notes.append)]
    assert 12 - 12 / chunks <= len(stamps) < 12  # only the bad chunk's messages are lost
    assert stamps[-1] == BAG_T0 + 11 * 10**8 and len(set(stamps)) == len(stamps)
    assert len(notes) == 1 and '1 corrupt chunk' in notes[0]


def test_a_corrupt_sqlite_page_is_reported_as_a_corrupt_file(tmp_path):
    bag = write_image_bag(tmp_path / 'bag', 'sqlite3', frames=12, size=(60, 80))
    db3 = next(bag.glob('*.db3'))
    corrupt_sqlite_messages(db3)
    with pytest.raises(bags.BagError, match='corrupt') as error:
        bags.topic_counts(bag, partial=True)  # was {'/camera/image_raw': 0}: "no messages on ..."
    assert db3.name in str(error.value)


def test_the_probe_script_runs_its_probes(tmp_path):
    """benchmarks/hostile_probes.py (the repeatable form of these probes) at its cheapest probes."""
    report_path = tmp_path / 'report.json'
    result = subprocess.run([sys.executable, str(REPO_ROOT / 'benchmarks' / 'hostile_probes.py'), '--only',
                             'mcap_chunk', 'repeated_stamps', '--json', str(report_path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    report = json.loads(report_path.read_text())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert report['mcap_chunk']['read'] >= 10 and report['repeated_stamps']['dropped'] == 3
