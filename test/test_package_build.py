"""The package builds with a real `colcon build` as an ament_python package and installs
what ROS users expect (executables under lib/, launch/config under share/, the ament index
marker); the ROS-free core imports without rclpy."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'hr_depth_ros'
ROS_MODULES = {'depth_node', 'finetune_node', 'play_bag', 'ros_messages'}


def console_scripts() -> dict[str, str]:
    """Executable name -> 'module:function' from setup.py, read without running it."""
    tree = ast.parse((REPO / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    entries = ast.literal_eval(value)
                    return {e.split('=')[0].strip(): e.split('=')[1].strip() for e in entries}
    raise AssertionError('setup.py declares no console_scripts')


def colcon() -> str:
    exe = shutil.which('colcon') or str(Path(sys.executable).with_name('colcon'))
    if not Path(exe).exists():
        pytest.skip('colcon is not installed (requirements.txt installs it; CI has it)')
    return exe


def test_every_executable_points_at_a_module_with_main():
    for name, target in console_scripts().items():
        module, func = target.split(':')
        path = REPO / (module.replace('.', '/') + '.py')
        assert path.exists(), f'{name}: {path} missing'
        functions = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert func in functions, f'{name}: {module} has no {func}()'


def test_colcon_sees_an_ament_python_package():
    out = subprocess.run([colcon(), 'list', '--base-paths', str(REPO)], capture_output=True, text=True,
                         check=True).stdout
    assert f'{PACKAGE}\t' in out and '(ros.ament_python)' in out, out


def test_colcon_build_installs_the_ros_layout(tmp_path):
    exe = colcon()
    env = dict(os.environ, PATH=f'{Path(sys.executable).parent}:{os.environ.get("PATH", "")}')
    build = subprocess.run(
        [exe, '--log-base', str(tmp_path / 'log'), 'build', '--base-paths', str(REPO),
         '--build-base', str(tmp_path / 'build'), '--install-base', str(tmp_path / 'install')],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert build.returncode == 0, build.stdout + build.stderr
    prefix = tmp_path / 'install' / PACKAGE
    for name in console_scripts():
        assert (prefix / 'lib' / PACKAGE / name).is_file(), f'executable {name} not installed'
    share = prefix / 'share' / PACKAGE
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE).is_file()
    assert (share / 'package.xml').is_file()
    for pattern in ('launch/*.launch.py', 'config/*.yaml', 'config/*.rviz', 'config/*.xml'):
        for source in REPO.glob(pattern):
            assert (share / source.relative_to(REPO)).is_file(), f'{source.name} not installed'
    probe = subprocess.run(
        ['bash', '-c', f'source {tmp_path}/install/setup.bash && {sys.executable} -c '
         '"from ament_index_python.packages import get_package_share_directory as g; '
         f'print(g(\'{PACKAGE}\'))"'],
        capture_output=True, text=True, env=env)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).resolve() == share.resolve()


def test_core_imports_without_rclpy():
    core = sorted(
        '.'.join(p.relative_to(REPO).with_suffix('').parts)
        for p in (REPO / PACKAGE).rglob('*.py')
        if p.stem not in ROS_MODULES and p.stem != '__main__')
    code = (
        'import sys\n'
        'for blocked in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "builtin_interfaces"):\n'
        '    sys.modules[blocked] = None\n'
        'import importlib\n'
        f'for name in {core!r}:\n'
        '    importlib.import_module(name.replace(".__init__", ""))\n'
        'print("ok", len(' + repr(core) + '))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('ok')
