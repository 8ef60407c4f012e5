"""Launch file, parameter file and rviz config agree with the node and setup.py.

The static checks always run (launch_ros is not installable on every machine); building the
LaunchDescription runs only where launch_ros imports.
"""
from __future__ import annotations

import ast
import re
import importlib.util
from pathlib import Path

import pytest
import yaml

from hr_depth_ros.core.depth_options import NODE_NAME, PARAMETER_NAMES, PARAMETERS_BY_NAME, NodeConfig

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'depth.launch.py'
SETUP = REPO / 'setup.py'


def _setup_call() -> ast.Call:
    tree = ast.parse(SETUP.read_text())
    return next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup')


def _console_scripts() -> set[str]:
    entry_points = next(kw.value for kw in _setup_call().keywords if kw.arg == 'entry_points')
    scripts = ast.literal_eval(entry_points)['console_scripts']
    return {line.split('=')[0].strip() for line in scripts}


def _installed_config_globs() -> list[str]:
    data_files = next(kw.value for kw in _setup_call().keywords if kw.arg == 'data_files')
    globs = []
    for entry in data_files.elts:
        destination = ast.unparse(entry.elts[0])
        if 'config' in destination:
            globs += [node.args[0].value for node in ast.walk(entry.elts[1])
                      if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'glob']
    return globs


def _launch_tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text())


def _node_calls(tree: ast.Module) -> list[dict[str, object]]:
    """Constant keyword arguments of every ``Node(...)`` call (module-level constant names resolved)."""
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) for target in node.targets if isinstance(target, ast.Name)}
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'Node':
            call = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Constant):
                    call[kw.arg] = kw.value.value
                elif isinstance(kw.value, ast.Name) and kw.value.id in constants:
                    call[kw.arg] = constants[kw.value.id]
            calls.append(call)
    return calls


def test_launch_executables_are_console_scripts():
    calls = _node_calls(_launch_tree())
    ours = [c for c in calls if c.get('package') == 'hr_depth_ros']
    assert ours, 'the launch file starts no hr_depth_ros node'
    scripts = _console_scripts()
    for call in ours:
        assert call['executable'] in scripts, f"{call['executable']} is not a console_scripts entry point"
        assert call.get('name') == NODE_NAME
    assert any(c.get('executable') == 'rviz2' for c in calls)


def test_launch_config_files_exist_and_are_installed():
    import fnmatch

    names = {node.value for node in ast.walk(_launch_tree())
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.fullmatch(r'[\w.-]+\.(yaml|rviz|xml)', node.value)}
    assert names == {'depth.yaml', 'depth.rviz', 'fastdds_large_data.xml'}
    globs = _installed_config_globs()
    for name in names:
        assert (REPO / 'config' / name).is_file(), f'config/{name} is missing'
        assert any(fnmatch.fnmatch(f'config/{name}', pattern) for pattern in globs), \
            f'config/{name} is not installed by setup.py data_files ({globs})'


def test_launch_passes_only_declared_parameters():
    tree = _launch_tree()
    table = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(getattr(t, 'id', None) == 'NODE_PARAMETER_ARGUMENTS' for t in node.targets))
    passed = {key.value for key in table.keys}
    assert passed == {'weights', 'device', 'image_transport', 'depth_scale', 'autostart'}
    assert passed <= set(PARAMETER_NAMES)
    for key, value in zip(table.keys, table.values):
        assert type(PARAMETERS_BY_NAME[key.value].default).__name__ == value.id
    declared_arguments = {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                          and getattr(node.func, 'id', None) == 'DeclareLaunchArgument'}
    assert declared_arguments == {'image', 'camera_info', 'weights', 'device', 'image_transport',
                                  'params_file', 'use_rviz', 'depth_scale', 'autostart'}
    assert passed <= declared_arguments
    remapped = {elt.elts[0].value for node in ast.walk(tree) if isinstance(node, ast.keyword)
                and node.arg == 'remappings' for elt in node.value.elts}
    assert remapped == {'image', 'image/compressed', 'camera_info'}
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' in LAUNCH_FILE.read_text()
    # The managed node reaches active by default (as before the lifecycle), whatever the params file says.
    autostart = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and getattr(node.func, 'id', None) == 'DeclareLaunchArgument' and node.args[0].value == 'autostart')
    default = next(kw.value.value for kw in autostart.keywords if kw.arg == 'default_value')
    assert yaml.safe_load(default) is True and PARAMETERS_BY_NAME['autostart'].default is True


def test_depth_yaml_declares_every_parameter_with_the_right_type():
    from hr_depth_ros.core.depth_options import depth_yaml

    text = (REPO / 'config' / 'depth.yaml').read_text()
    assert text == depth_yaml(), 'config/depth.yaml is out of date: run python scripts/readme_tables.py --write'
    data = yaml.safe_load(text)
    params = data[NODE_NAME]['ros__parameters']
    assert set(params) == set(PARAMETER_NAMES), set(params) ^ set(PARAMETER_NAMES)
    for name, value in params.items():
        expected = type(PARAMETERS_BY_NAME[name].default)
        assert type(value) is expected, f'{name}: {value!r} is not {expected.__name__}'
        assert value == PARAMETERS_BY_NAME[name].default, f'{name}: yaml {value!r} != code default'
    # The defaults validate once weights is given.
    NodeConfig.from_values(dict(params, weights='/some/folder'))


def test_rviz_config_names_topics_and_fixed_frame():
    rviz = yaml.safe_load((REPO / 'config' / 'depth.rviz').read_text())
    manager = rviz['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == 'camera_optical_frame'
    topics = {d['Class']: d['Topic']['Value'] for d in manager['Displays'] if 'Topic' in d}
    assert topics == {'rviz_default_plugins/Image': 'depth/colored', 'rviz_default_plugins/PointCloud2': 'points'}


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None,
                    reason='launch_ros is not installed here; the static checks above cover the file')
def test_launch_description_builds(monkeypatch):
    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location('depth_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        description = module.generate_launch_description()
    except Exception as error:  # the package must be installed for get_package_share_directory
        pytest.skip(f'hr_depth_ros is not installed in an ament prefix: {error}')
    assert isinstance(description, LaunchDescription)
    names = {a.name for a in description.get_launch_arguments()}
    assert {'image', 'weights', 'use_rviz', 'params_file'} <= names


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
