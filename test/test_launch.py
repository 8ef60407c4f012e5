"""The launch files and the README's ros2 commands, run for real from a colcon-built install.

``ros2 launch`` / ``ros2 run`` / ``ros2 lifecycle`` / ``ros2 param`` come from the ROS 2 install, or
in a venv without ROS from ``../shared/third_party/ros2`` (scripts/setup_venv.sh installs them).
The commands are taken from the README's code blocks, placeholders filled in, so a README that
drifts from what works fails here. One node is launched per scenario and every check that the
scenario allows is made on it (each start costs 7-11 s on 2 cores).
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hr_depth_ros.core.depth_options import NODE_NAME, PARAMETER_NAMES, PARAMETERS_BY_NAME, NodeConfig
from hr_depth_ros.ros.probe import GraphProbe
from hr_depth_ros.ros.transport import fastdds_profile_path, local_ros_env

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
PACKAGE = 'hr_depth_ros'
THIRD_PARTY_ROS2 = REPO.parent / 'shared' / 'third_party' / 'ros2'
SHIPPED_WEIGHTS = 'models/lite_hr_depth_synthetic'  # relative to the repository root, as in the README
START_TIMEOUT = 120.0  # ros2 launch to the first depth: 7-11 s with a warm model cache, ~30 s converting, busy CI
STOP_TIMEOUT = 20.0
# Fast DDS reads its profile when this process creates its first participant: set it before any.
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds_profile_path()))

# --- the README's ros2 commands ------------------------------------------------------------------

# README placeholder -> fixture key of the value the suite substitutes.
PLACEHOLDERS = {
    '/path/to/HR_Depth_K_M_1280x384': 'weights',
    '...': 'weights',  # weights:=...
    '<folder>': 'weights',
    'my_drive': 'bag',
    '/data/my_drive': 'bag',
    '/data/calib_drive': 'bag',
    '/data/finetuned': 'output',
}
# Command prefixes the suite runs (by the test named), and those it cannot run here (with the reason);
# a README command matching NOT_RUN is not run even when it matches RUN too.
DEPTH_LAUNCH = 'ros2 launch hr_depth_ros depth.launch.py image:=/camera/image_raw camera_info:='
COMPRESSED_LAUNCH = 'ros2 launch hr_depth_ros depth.launch.py image:=/camera/image_raw image_transport:=compressed'
RUN = {
    DEPTH_LAUNCH: 'test_depth_launch_* (one launch with the arguments of all these commands)',
    COMPRESSED_LAUNCH: 'test_autostart_false_then_the_readme_lifecycle_commands',
    'ros2 lifecycle ': 'test_autostart_false_then_the_readme_lifecycle_commands',
    'ros2 param set ': 'test_autostart_false_then_the_readme_lifecycle_commands',
    'ros2 run hr_depth_ros play_bag ': 'the camera of test_depth_launch_*',
    'ros2 run hr_depth_ros depth_node ': 'test_readme_ros2_run_depth_node',
    'ros2 launch hr_depth_ros finetune.launch.py ': 'test_finetune_launch_writes_a_loadable_checkpoint',
}
NOT_RUN = {
    'ros2 launch hr_depth_ros depth.launch.py adapt:=true': 'the launch argument passes the adapt parameter as it '
                                                           'passes autostart (run here); test_adaptation runs the '
                                                           'node with adapt',
    'ros2 bag ': 'rosbag2 (ros2 bag) is not among the ROS 2 packages installed here; play_bag stands in for it',
    'ros2 run hr_depth_ros depth_node --ros-args --params-file config/depth.yaml -p weights:=<folder> '
    '-p precision:=int8': 'int8 quantises the model at the first start (~80 s on 2 busy cores); test_quantization '
                          'runs int8 in the node, the plain ros2 run line runs here',
}


def readme_ros2_commands() -> list[str]:
    """Every ``ros2 ...`` line of the README's bash code blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', README.read_text(), flags=re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == 'ros2':
                commands.append(' '.join(words))
    return commands


def readme_commands(prefix: str) -> list[str]:
    """The README commands starting with ``prefix`` that the suite runs (at least one)."""
    found = [c for c in readme_ros2_commands() if c.startswith(prefix) and not c.startswith(tuple(NOT_RUN))]
    assert found, f'the README has no command starting with {prefix!r}'
    return found


def filled(command: str, values: dict[str, str]) -> list[str]:
    """The README ``command`` as argv with its placeholders (whole words or ``name:=`` values) filled in."""
    argv = []
    for word in shlex.split(command):
        name, sep, value = word.rpartition(':=')
        if word in PLACEHOLDERS:
            word = values[PLACEHOLDERS[word]]
        elif sep and value in PLACEHOLDERS:
            word = f'{name}:={values[PLACEHOLDERS[value]]}'
        assert not re.search(r'<\w+>|/path/to/|/data/|\.\.\.', word), f'unfilled placeholder in {word!r}'
        argv.append(word)
    return argv


def merged(commands: list[list[str]]) -> list[str]:
    """One command with the ``name:=value`` arguments of all ``commands`` (same program; no conflicts)."""
    program = [w for w in commands[0] if ':=' not in w]
    arguments: dict[str, str] = {}
    for argv in commands:
        assert [w for w in argv if ':=' not in w] == program, (argv, program)
        for name, value in (w.split(':=', 1) for w in argv if ':=' in w):
            assert arguments.setdefault(name, value) == value, f'README commands disagree on {name}'
    return program + [f'{name}:={value}' for name, value in arguments.items()]


def test_every_readme_ros2_command_is_run_or_has_a_reason():
    commands = readme_ros2_commands()
    assert len(commands) >= 10, commands
    for command in commands:
        assert command.startswith((*RUN, *NOT_RUN)), f'README command not run by the suite: {command}'
    for prefix in RUN:
        readme_commands(prefix)


# --- environment: a sourced colcon install, the ros2 command ---------------------------------------

def _ros2_executable() -> str | None:
    beside = Path(sys.executable).with_name('ros2')
    return str(beside) if beside.exists() else shutil.which('ros2')


@pytest.fixture(scope='module')
def ros2_env(colcon_install, tmp_path_factory) -> dict[str, str]:
    """The environment of a shell that sourced the install (``source install/setup.bash``), with the
    ``ros2`` command on PATH, on a domain of this module's own and ROS logs in a temporary folder."""
    have_launch = all(importlib.util.find_spec(name) for name in ('launch', 'launch_ros', 'ros2cli'))
    if not (have_launch and _ros2_executable()):
        if THIRD_PARTY_ROS2.is_dir():
            pytest.fail(f'{THIRD_PARTY_ROS2} exists but launch_ros / ros2 are not installed in {sys.prefix}: '
                        'run scripts/setup_venv.sh')
        pytest.skip(f'no ROS 2 launch system / ros2 command here and no {THIRD_PARTY_ROS2} to install them from')
    base = dict(local_ros_env(), PATH=f'{Path(_ros2_executable()).parent}:{os.environ.get("PATH", "")}')
    base.pop('FASTDDS_DEFAULT_PROFILES_FILE')  # the launch file sets it for its processes; see the tests
    sourced = subprocess.run(['bash', '-c', f'source {colcon_install}/setup.bash && env -0'],
                             capture_output=True, env=base, check=True).stdout
    env = dict(entry.split('=', 1) for entry in sourced.decode().split('\0') if '=' in entry)
    # One inference / training thread: on a busy 2-core machine two threads were many times slower.
    env.update(ROS_LOG_DIR=str(tmp_path_factory.mktemp('ros_log')), PYTHONUNBUFFERED='1',
               RCUTILS_COLORIZED_OUTPUT='0', OMP_NUM_THREADS='1')
    yield env
    # ros2 lifecycle / param start the ros2 daemon, as for any user: stop it.
    subprocess.run(['ros2', 'daemon', 'stop'], env=env, capture_output=True, timeout=30)


@pytest.fixture(scope='module')
def share(colcon_install) -> Path:
    """share/hr_depth_ros of the install (what ``ros2 pkg prefix hr_depth_ros`` + share/ names)."""
    return colcon_install / PACKAGE / 'share' / PACKAGE


class Launched:
    """A command (ros2 launch / ros2 run) in its own process group, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.log = argv, log
        self.stuck = ''  # where its threads waited when it did not stop on SIGINT (interrupt)
        with open(log, 'wb') as handle:
            # stdin not a terminal: ros2 launch runs non-interactive and forwards a SIGINT sent to it alone.
            self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=handle,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors='replace')

    def descendants(self) -> list:
        import psutil

        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f'{shlex.join(self.argv)} exited (rc {self.proc.returncode}):\n{self.tail()}')

    def tail(self, lines: int = 40) -> str:
        return '\n'.join(self.text().splitlines()[-lines:])

    def interrupt(self) -> tuple[int, list]:
        """SIGINT (Ctrl-C) to the command alone; its exit status and the processes it left running."""
        import psutil

        children = self.descendants()
        self.proc.send_signal(signal.SIGINT)
        try:
            returncode = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            returncode = None
        _, alive = psutil.wait_procs(children, timeout=5)
        if returncode is None or alive:  # the test fails; leave no node behind for the next ones (same names)
            self.stuck = self.where_stuck()
            self.kill()
            for process in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        return returncode, alive

    def stop_failure(self, returncode: int | None, left: list) -> str:
        """The message of a failed :meth:`interrupt`: exit status, processes left, where the command waited."""
        return f'rc {returncode}, left {left}; where each process waited:\n{self.stuck}\n--- its output:\n{self.tail()}'

    def where_stuck(self) -> str:
        """Where the command and each process under it wait (Linux /proc), for the failure message: per
        process its state and signal masks (pending, blocked, ignored, caught), per thread its state and
        kernel wchan; a zombie whose threads still run, a signal left pending or blocked shows here."""
        def process(pid: int) -> str:
            base = Path(f'/proc/{pid}')
            try:
                status = dict(line.split(':', 1) for line in (base / 'status').read_text().splitlines() if ':' in line)
                masks = ' '.join(f'{key}={status[key].strip()}'
                                 for key in ('SigPnd', 'ShdPnd', 'SigBlk', 'SigIgn', 'SigCgt'))
                threads = ', '.join(f'{t.name}:{(t / "comm").read_text().strip()}'
                                    f'[{(t / "stat").read_text().rsplit(")", 1)[1].split()[0]}]'
                                    f'@{(t / "wchan").read_text().strip()}' for t in sorted((base / 'task').iterdir()))
                return f'{pid} {status["Name"].strip()} {status["State"].strip()} {masks}; threads {threads}'
            except (OSError, KeyError, IndexError) as error:
                return f'{pid}: (no /proc view: {error})'

        return '\n'.join(process(pid) for pid in [self.proc.pid, *(p.pid for p in self.descendants())])

    def kill(self) -> None:
        """Whatever is left of its process group (after a failed test)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)


def poll(predicate, seconds: float, processes=()) -> object:
    """``predicate()`` once it is truthy within ``seconds``, else None; fails when a process exits first."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        for process in processes:
            process.check_alive()
        time.sleep(0.05)
    return None


def tails(processes) -> str:
    return '\n'.join(f'--- {shlex.join(p.argv)}:\n{p.tail()}' for p in processes)


def wait_until(predicate, timeout: float, what: str, *processes: Launched):
    value = poll(predicate, timeout, processes)
    if not value:
        pytest.fail(f'timed out after {timeout:.0f} s waiting for {what}\n' + tails(processes))
    return value


def ros2(env: dict[str, str], argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# --- an rclpy node in this process: the camera and the listener --------------------------------------

OUTPUT_TYPES = {'/depth': 'Image', '/depth/camera_info': 'CameraInfo', '/depth/colored': 'Image',
                '/points': 'PointCloud2'}


class Probe(GraphProbe):
    """The project's GraphProbe as camera and listener: publishes frames, records the depth node's
    outputs, reads the node's graph and parameters."""

    serial = itertools.count()

    def __init__(self, domain_id: int, image_topic: str = '', info_topic: str = '') -> None:
        """A camera on ``image_topic`` (CompressedImage when it ends in /compressed) and ``info_topic``, if given."""
        import sensor_msgs.msg

        super().__init__(f'launch_probe_{next(Probe.serial)}', domain_id=domain_id)
        self.camera = {}
        if image_topic:
            image_type = 'CompressedImage' if image_topic.endswith('/compressed') else 'Image'
            self.camera['image'] = self.publisher(getattr(sensor_msgs.msg, image_type), image_topic)
            self.camera['camera_info'] = self.publisher(sensor_msgs.msg.CameraInfo, info_topic)
        for topic, type_name in OUTPUT_TYPES.items():
            self.subscribe(getattr(sensor_msgs.msg, type_name), topic)

    def count(self, topic: str) -> int:
        return len(self.received(topic))

    def last(self, topic: str):
        received = self.received(topic)
        return received[-1] if received else None

    def send(self, frame: dict, stamp: tuple[int, int]) -> None:
        """Publish ``frame`` ({'image': msg, 'camera_info': msg}) stamped ``stamp``, camera_info first."""
        for name in ('camera_info', 'image'):
            msg = frame[name]
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
            self.camera[name].publish(msg)
            time.sleep(0.05)

    def send_until_output(self, frame: dict, stamp: tuple[int, int], timeout: float, *processes: Launched) -> dict:
        """Send ``frame`` (again every 2 s: a best-effort hop may lose one) until every output for it arrived."""
        def outputs():
            found = {t: next((m for m in self.received(t) if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp),
                             None) for t in OUTPUT_TYPES}
            return found if all(found.values()) else None

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send(frame, stamp)
            result = poll(outputs, 2.0, processes)
            if result:
                return result
        pytest.fail(f'no complete output for stamp {stamp} within {timeout:.0f} s\n' + tails(processes))

    def graph(self, node_name: str = NODE_NAME) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(published, subscribed) topic -> types of ``/node_name``."""
        return (dict(self.node.get_publisher_names_and_types_by_node(node_name, '/')),
                dict(self.node.get_subscriber_names_and_types_by_node(node_name, '/')))

    def parameters(self, names: list[str], node_name: str = NODE_NAME) -> dict:
        from rclpy.parameter import parameter_value_to_python
        from rclpy.parameter_client import AsyncParameterClient

        client = AsyncParameterClient(self.node, f'/{node_name}')
        assert client.wait_for_services(20.0), f'/{node_name} has no parameter services'
        future = client.get_parameters(names)
        wait_until(future.done, 20.0, 'get_parameters')
        return {name: parameter_value_to_python(value) for name, value in zip(names, future.result().values)}


@pytest.fixture(scope='module')
def camera_frames(synthetic_bag) -> list[dict]:
    """Four frames of the synthetic drive as rclpy messages: image, image/compressed and camera_info."""
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from hr_depth_ros.core.bags import read_messages
    from hr_depth_ros.ros.play_bag import to_rclpy
    from hr_depth_ros.tools.make_synthetic_bag import CAMERA_INFO_TOPIC, COMPRESSED_TOPIC, IMAGE_TOPIC

    classes = {IMAGE_TOPIC: ('image', Image), COMPRESSED_TOPIC: ('compressed', CompressedImage),
               CAMERA_INFO_TOPIC: ('camera_info', CameraInfo)}
    frames: dict[int, dict] = {}
    for topic, _, stamp, msg in read_messages(synthetic_bag, list(classes)):
        name, cls = classes[topic]
        frames.setdefault(stamp, {})[name] = to_rclpy(msg, cls())
        if len(frames) > 4:
            break
    return [f for f in frames.values() if len(f) == 3][:4]


def bag_stamps(bag: Path) -> set[tuple[int, int]]:
    from hr_depth_ros.core.bags import read_messages
    from hr_depth_ros.tools.make_synthetic_bag import IMAGE_TOPIC

    return {(m.header.stamp.sec, m.header.stamp.nanosec) for _, _, _, m in read_messages(bag, [IMAGE_TOPIC])}


def depth_array(msg) -> np.ndarray:
    from hr_depth_ros.core import image_decoding

    return image_decoding.image_to_array(msg)


def cloud_points(msg) -> np.ndarray:
    from hr_depth_ros.core.pointcloud import unpack_points

    return unpack_points(bytes(msg.data), with_rgb=any(f.name == 'rgb' for f in msg.fields))[0]


def readme_topic_table() -> dict[str, tuple[str, str]]:
    """The README topic table: topic -> (message type as pkg/msg/Type, 'in' | 'out')."""
    rows = re.findall(r'^\| `([^`]+)` \| (\w+)/(\w+) \| (in|out) \|', README.read_text(), flags=re.M)
    assert rows, 'the README has no topic table'
    return {topic: (f'{package}/msg/{name}', direction) for topic, package, name, direction in rows}


# --- finetune.launch.py: the job, started before the depth launch and running beside it ---------------

FINETUNE_STEPS = 2


@pytest.fixture(scope='module')
def finetune_launch(ros2_env, share, synthetic_bag, tmp_path_factory):
    """The README's finetune.launch.py command on a synthetic bag, with a params_file for a tiny job
    (2 steps at 128x64), started and left running (it runs beside the depth launch: every process
    here is single-threaded and the machine has 2 cores); yields it and its output folder."""
    folder = tmp_path_factory.mktemp('finetune_launch')
    params = yaml.safe_load((share / 'config' / 'finetune.yaml').read_text())
    params['hr_depth_finetune']['ros__parameters'].update(
        steps=FINETUNE_STEPS, width=128, height=64, batch_size=1, device='cpu', val_fraction=0.0, log_every=1)
    params_file = folder / 'tiny.yaml'
    params_file.write_text(yaml.safe_dump(params))
    output = folder / 'finetuned'
    command = filled(readme_commands('ros2 launch hr_depth_ros finetune.launch.py ')[0],
                     {'bag': str(synthetic_bag), 'output': str(output)}) + [f'params_file:={params_file}']
    launched = Launched(command, ros2_env, folder / 'launch.log')
    try:
        yield launched, output
    finally:
        launched.kill()


# --- depth.launch.py with a camera: every argument, rviz, topics, SIGINT ----------------------------

# Launch arguments of the scenario beyond the README command; params_file sets network output
# resolution and min_depth 40 m, so depth_scale 3 puts every depth at >= 120 m (the default
# parameters cannot give more than max_depth 100 m).
LAUNCH_EXTRA = {'device': 'cpu', 'depth_scale': '3.0'}
PARAMS_FILE_CHANGES = {'output_resolution': 'network', 'min_depth': 40.0, 'points_max_range': 0.0}


@pytest.fixture(scope='module')
def depth_launch(ros2_env, share, synthetic_bag, finetune_launch, tmp_path_factory):
    """The README's depth.launch.py command (shipped checkpoint, plus ``device``, ``depth_scale`` and a
    ``params_file``) with the README's play_bag as the camera; yields once depth and points arrive.
    (Starts after the fine-tuning launch, which runs meanwhile.)"""
    folder = tmp_path_factory.mktemp('depth_launch')
    params = yaml.safe_load((share / 'config' / 'depth.yaml').read_text())
    params[NODE_NAME]['ros__parameters'].update(PARAMS_FILE_CHANGES)
    params_file = folder / 'params.yaml'
    params_file.write_text(yaml.safe_dump(params))
    values = {'weights': SHIPPED_WEIGHTS, 'bag': str(synthetic_bag)}
    command = merged([filled(c, values) for c in readme_commands(DEPTH_LAUNCH)])
    command += [f'{name}:={value}' for name, value in LAUNCH_EXTRA.items()] + [f'params_file:={params_file}']
    camera_command = filled(readme_commands('ros2 run hr_depth_ros play_bag ')[0], values)
    probe = Probe(int(ros2_env['ROS_DOMAIN_ID']))
    launched = Launched(command, ros2_env, folder / 'launch.log')
    camera = Launched(camera_command, dict(ros2_env, FASTDDS_DEFAULT_PROFILES_FILE=str(fastdds_profile_path())),
                      folder / 'camera.log')
    try:
        wait_until(lambda: probe.count('/depth') >= 2 and probe.count('/points') >= 2, START_TIMEOUT,
                   'depth and points from the launched node', launched, camera)
        yield launched, probe, command, camera
    finally:
        probe.close()
        for process in (camera, launched):
            process.kill()


def test_depth_launch_publishes_depth_and_points_for_camera_frames(depth_launch, synthetic_bag, share, ros2_env):
    launched, probe, command, _ = depth_launch
    stamps = bag_stamps(synthetic_bag)
    depth, cloud = probe.last('/depth'), probe.last('/points')
    for msg in (depth, cloud, probe.last('/depth/colored'), probe.last('/depth/camera_info')):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in stamps  # image:= / camera_info:= remaps
        assert msg.header.frame_id == 'camera_optical_frame'
    # params_file: network resolution (the checkpoint's 320x96) and min_depth 40; depth_scale 3: >= 120 m
    assert depth.encoding == '32FC1' and (depth.width, depth.height) == (320, 96)
    values = depth_array(depth)
    finite = values[np.isfinite(values)]
    assert finite.size > 0.9 * values.size
    assert finite.min() >= 3.0 * 40.0 * (1 - 1e-5) and finite.max() <= 3.0 * 100.0 * (1 + 1e-5)
    points = cloud_points(cloud)
    assert len(points) > 1000 and points[:, 2].min() >= 120.0 * (1 - 1e-5)
    parameters = probe.parameters(['weights', 'device', 'depth_scale', 'autostart', 'output_resolution'])
    assert parameters == {'weights': SHIPPED_WEIGHTS, 'device': 'cpu', 'depth_scale': 3.0, 'autostart': True,
                          'output_resolution': 'network'}
    # The launch file gives its node the large-message Fast DDS profile (none was set by the caller).
    nodes = [p for p in launched.descendants() if any('depth_node' in part for part in p.cmdline())]
    assert len(nodes) == 1
    assert Path(nodes[0].environ()['FASTDDS_DEFAULT_PROFILES_FILE']) == share / 'config' / 'fastdds_large_data.xml'
    # use_rviz:=true (a README command): rviz2 starts where installed; where not, a warning names it and
    # the node runs (above).
    assert 'use_rviz:=true' in command
    rviz_installed = any((Path(prefix) / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'rviz2').exists()
                         for prefix in ros2_env.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if prefix)
    lines = launched.text().splitlines()
    if rviz_installed:
        assert any('rviz2' in line and 'process started' in line for line in lines), launched.tail()
    else:
        assert any('WARNING' in line and 'rviz2' in line for line in lines), launched.tail()


def test_rviz_config_shows_what_the_node_publishes(depth_launch, share):
    """Every rviz display's topic is published by the running node with the display's message type,
    and the fixed frame is the frame the node stamps its outputs with."""
    _, probe, _, _ = depth_launch
    display_types = {'rviz_default_plugins/Image': 'sensor_msgs/msg/Image',
                     'rviz_default_plugins/PointCloud2': 'sensor_msgs/msg/PointCloud2'}
    manager = yaml.safe_load((share / 'config' / 'depth.rviz').read_text())['Visualization Manager']
    published, _ = probe.graph()
    displays = [d for d in manager['Displays'] if 'Topic' in d]
    assert len(displays) == 2
    for display in displays:
        topic = '/' + display['Topic']['Value'].lstrip('/')  # rviz resolves relative names in the root namespace
        assert published.get(topic) == [display_types[display['Class']]], (display['Name'], topic, published)
    assert manager['Global Options']['Fixed Frame'] == probe.last('/points').header.frame_id


def test_readme_topic_table_is_what_the_node_publishes_and_subscribes(depth_launch):
    _, probe, command, _ = depth_launch
    remaps = dict(word.split(':=', 1) for word in command if word.split(':=')[0] in ('image', 'camera_info'))
    table = readme_topic_table()
    published, subscribed = probe.graph()
    internal = {'/rosout', '/parameter_events', f'/{NODE_NAME}/transition_event'}
    outputs = {('/' + t.replace('~', NODE_NAME)).replace('//', '/'): [msg_type]
               for t, (msg_type, direction) in table.items() if direction == 'out'}
    assert {t: v for t, v in published.items() if t not in internal} == outputs
    inputs = {remaps[t]: [msg_type] for t, (msg_type, direction) in table.items()
              if direction == 'in' and t in remaps}
    assert {t: v for t, v in subscribed.items() if t not in internal} == inputs


def test_depth_launch_exits_cleanly_on_sigint(depth_launch):
    """SIGINT (Ctrl-C) to ros2 launch: exit status 0 and no process left; the camera (ros2 run play_bag) too."""
    launched, _, _, camera = depth_launch
    assert launched.descendants(), 'the launch has no node process'
    for process in (launched, camera):
        returncode, left = process.interrupt()
        assert returncode == 0 and not left, process.stop_failure(returncode, left)
        assert 'Traceback' not in process.text()


@pytest.mark.parametrize('shut_down', [True, False], ids=['after_sigint', 'while_running'])
def test_depth_node_exception_during_shutdown_is_a_clean_stop(monkeypatch, shut_down):
    """An exception out of rclpy.spin once SIGINT has shut the context down (seen: take_message's
    RuntimeError when Ctrl-C lands while a frame is converted) ends the node with 0, not a traceback
    and a hang; the same exception while the context runs is raised."""
    import rclpy

    from hr_depth_ros.ros import depth_node

    def spin(node) -> None:
        if shut_down:
            rclpy.shutdown()
        raise RuntimeError('Unable to convert call argument')

    monkeypatch.setattr(rclpy, 'spin', spin)
    argv = ['depth_node', '--ros-args', '-p', 'autostart:=false']
    if shut_down:
        assert depth_node.main(argv) == 0
    else:
        with pytest.raises(RuntimeError):
            depth_node.main(argv)
    assert not rclpy.ok()


# --- autostart:=false, then the README's lifecycle and parameter commands --------------------------

def test_autostart_false_then_the_readme_lifecycle_commands(ros2_env, camera_frames, tmp_path):
    """The README's compressed-camera launch with ``autostart:=false``: the node waits unconfigured;
    the README's ``ros2 lifecycle`` / ``ros2 param set`` lines, as written, bring it up and retune it."""
    command = merged([filled(c, {'weights': SHIPPED_WEIGHTS}) for c in readme_commands(COMPRESSED_LAUNCH)])
    command += ['autostart:=false']
    lifecycle = [c for c in readme_ros2_commands() if c.startswith(('ros2 lifecycle ', 'ros2 param set '))]
    assert [c.split()[:4] for c in lifecycle[:2]] == [['ros2', 'lifecycle', 'set', f'/{NODE_NAME}']] * 2
    probe = Probe(int(ros2_env['ROS_DOMAIN_ID']), '/camera/image_raw/compressed', '/camera/camera_info')
    launched = Launched(command, ros2_env, tmp_path / 'launch.log')
    frames = [{'image': f['compressed'], 'camera_info': f['camera_info']} for f in camera_frames]
    try:
        # As a user would: the node is listed (the ros2 daemon has discovered it) before lifecycle commands.
        listed = lambda: f'/{NODE_NAME}' in ros2(ros2_env, ['ros2', 'node', 'list']).stdout.split()  # noqa: E731
        wait_until(listed, START_TIMEOUT, f'/{NODE_NAME} in ros2 node list', launched)
        # The probe's own participant discovers the node on its own schedule (seen: listed by ros2, not yet by it).
        known = lambda: NODE_NAME in probe.node.get_node_names()  # noqa: E731
        wait_until(known, START_TIMEOUT, f'/{NODE_NAME} discovered by the test probe', launched)
        _, subscribed = probe.graph()
        assert '/camera/image_raw/compressed' not in subscribed  # unconfigured: not subscribed
        assert probe.parameters(['autostart', 'image_transport']) == {'autostart': False,
                                                                      'image_transport': 'compressed'}
        states, strides = [], []
        for command_line in lifecycle:
            result = ros2(ros2_env, shlex.split(command_line))
            assert result.returncode == 0, (command_line, result.stdout, result.stderr)
            if command_line.startswith('ros2 lifecycle get'):
                states.append(result.stdout.split()[0])
            if command_line.startswith('ros2 param set'):
                strides.append(int(command_line.split()[-1]))
        assert states and states[-1] == 'active', states
        _, subscribed = probe.graph()
        assert subscribed.get('/camera/image_raw/compressed') == [readme_topic_table()['image/compressed'][0]]
        out = probe.send_until_output(frames[0], (3000, 0), START_TIMEOUT, launched)
        depth = depth_array(out['/depth'])
        assert (depth.shape[1], depth.shape[0]) == (camera_frames[0]['image'].width,
                                                    camera_frames[0]['image'].height)
        # points_stride from ros2 param set (depth.yaml: 2): a cloud of the pixels in that grid, no more
        stride = strides[-1]
        assert stride != PARAMETERS_BY_NAME['points_stride'].default
        assert 0.5 * depth[::stride, ::stride].size < len(cloud_points(out['/points'])) <= depth[::stride, ::stride].size
        returncode, left = launched.interrupt()
        assert returncode == 0 and not left, launched.stop_failure(returncode, left)
    finally:
        probe.close()
        launched.kill()


# --- ros2 run, as the README shows it --------------------------------------------------------------

def test_readme_ros2_run_depth_node(ros2_env, camera_frames, tmp_path):
    """The README's ``ros2 run hr_depth_ros depth_node ...`` line, as written from the repository root:
    the node takes its parameters and remaps, publishes depth and stops cleanly on SIGINT."""
    (readme_line,) = readme_commands('ros2 run hr_depth_ros depth_node ')
    command = filled(readme_line, {'weights': SHIPPED_WEIGHTS})
    options = {flag: dict(value.split(':=', 1) for f, value in zip(command, command[1:]) if f == flag)
               for flag in ('-p', '-r')}
    probe = Probe(int(ros2_env['ROS_DOMAIN_ID']), options['-r'].get('image', 'image'),
                  options['-r'].get('camera_info', 'camera_info'))
    frame = {'image': camera_frames[0]['image'], 'camera_info': camera_frames[0]['camera_info']}
    launched = Launched(command, dict(ros2_env, FASTDDS_DEFAULT_PROFILES_FILE=str(fastdds_profile_path())),
                        tmp_path / 'run.log')
    try:
        out = probe.send_until_output(frame, (4000, 0), START_TIMEOUT, launched)
        assert np.isfinite(depth_array(out['/depth'])).mean() > 0.9
        assert {k: str(v) for k, v in probe.parameters(sorted(options['-p'])).items()} == options['-p']
        returncode, left = launched.interrupt()
        assert returncode == 0 and not left, launched.stop_failure(returncode, left)
    finally:
        probe.close()
        launched.kill()


# --- finetune.launch.py (started by the finetune_launch fixture, before the depth launch) -----------

def test_finetune_launch_writes_a_loadable_checkpoint(finetune_launch):
    """The fine-tuning launch exits 0 and leaves a checkpoint the depth estimator loads and runs."""
    from hr_depth_ros.core.inference import DepthEstimator

    launched, output = finetune_launch
    try:
        returncode = launched.proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f'the fine-tuning launch did not finish in 240 s:\n{launched.tail()}')
    assert returncode == 0 and not launched.descendants(), launched.tail()
    assert json.loads((output / 'latest' / 'hr_depth_ros.json').read_text())['step'] == FINETUNE_STEPS
    estimator = DepthEstimator(output / 'latest', device='cpu', backend='torch')
    assert (estimator.width, estimator.height) == (128, 64)
    depth = estimator.predict_depth(np.full((64, 128, 3), 128, np.uint8))
    assert depth.shape == (64, 128) and np.isfinite(depth).all()


# --- files the launch file reads ---------------------------------------------------------------------

def test_depth_yaml_declares_every_parameter_with_the_right_type():
    data = yaml.safe_load((REPO / 'config' / 'depth.yaml').read_text())
    params = data[NODE_NAME]['ros__parameters']
    assert set(params) == set(PARAMETER_NAMES), set(params) ^ set(PARAMETER_NAMES)
    for name, value in params.items():
        expected = type(PARAMETERS_BY_NAME[name].default)
        assert type(value) is expected, f'{name}: {value!r} is not {expected.__name__}'
        assert value == PARAMETERS_BY_NAME[name].default, f'{name}: yaml {value!r} != code default'
    # The defaults validate once weights is given.
    NodeConfig.from_values(dict(params, weights='/some/folder'))


def test_fastdds_profile_and_local_env():
    import xml.etree.ElementTree as ET

    from hr_depth_ros.ros.transport import fastdds_profile_path, local_ros_env

    path = fastdds_profile_path()
    assert path.name == 'fastdds_large_data.xml' and path.is_file()
    ns = {'p': 'http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles'}
    root = ET.parse(path).getroot()
    descriptors = {d.findtext('p:transport_id', namespaces=ns): d
                   for d in root.iterfind('.//p:transport_descriptor', ns)}
    shm = next(d for d in descriptors.values() if d.findtext('p:type', namespaces=ns) == 'SHM')
    assert int(shm.findtext('p:segment_size', namespaces=ns)) == 32 * 1024 * 1024
    assert int(shm.findtext('p:maxMessageSize', namespaces=ns)) == 8 * 1024 * 1024
    udp = next(d for d in descriptors.values() if d.findtext('p:type', namespaces=ns) == 'UDPv4')
    assert [a.text for a in udp.iterfind('.//p:address', ns)] == ['127.0.0.1']
    participant = root.find('p:participant', ns)
    assert participant.get('is_default_profile') == 'true'
    assert participant.findtext('.//p:useBuiltinTransports', namespaces=ns) == 'false'
    assert {t.text for t in participant.iterfind('.//p:userTransports/p:transport_id', ns)} == set(descriptors)

    env = local_ros_env(7, base={'PATH': '/bin', 'ROS_DOMAIN_ID': '3'})
    assert env['ROS_DOMAIN_ID'] == '7' and env['PATH'] == '/bin'
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert env['RMW_IMPLEMENTATION'] == 'rmw_fastrtps_cpp'
    assert env['FASTDDS_DEFAULT_PROFILES_FILE'] == str(path)
    random_ids = {local_ros_env(base={'ROS_DOMAIN_ID': '3'})['ROS_DOMAIN_ID'] for _ in range(20)}
    assert '3' not in random_ids and all(1 <= int(d) <= 101 for d in random_ids)
    with pytest.raises(ValueError, match='ROS_DOMAIN_ID'):
        local_ros_env(500)
