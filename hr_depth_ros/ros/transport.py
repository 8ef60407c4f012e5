"""Environment for local-only ROS 2 traffic that carries camera-sized messages (ROS-free).

Fast DDS drops best-effort messages larger than about 0.5 MB unless its shared-memory
transport is enlarged (see ``config/fastdds_large_data.xml`` and the README's
troubleshooting section). Every test, benchmark and demo process that uses DDS runs with
:func:`local_ros_env`.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

from hr_depth_ros.core.resources import package_file

PROFILE_FILENAME = 'fastdds_large_data.xml'
# Domain IDs usable on Linux without port clashes are 0..101; 0 is everyone's default.
DOMAIN_ID_RANGE = (1, 101)


def fastdds_profile_path() -> Path:
    """Path of the shipped Fast DDS large-data profile (installed share first, else the checkout)."""
    return package_file(Path('config') / PROFILE_FILENAME)


def random_domain_id(avoid: set[int] | None = None) -> int:
    """A random ROS domain ID in 1..101 that is not in ``avoid``."""
    choices = [d for d in range(DOMAIN_ID_RANGE[0], DOMAIN_ID_RANGE[1] + 1) if d not in (avoid or set())]
    return random.SystemRandom().choice(choices)


def local_ros_env(domain_id: int | None = None, base: dict | None = None) -> dict[str, str]:
    """Environment for a process whose DDS traffic stays on this machine and carries large messages.

    Starts from ``base`` (default: ``os.environ``) and sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST,
    ROS_DOMAIN_ID (``domain_id``, or a random one that differs from the base's),
    FASTDDS_DEFAULT_PROFILES_FILE (the shipped profile) and RMW_IMPLEMENTATION=rmw_fastrtps_cpp.
    """
    env = {str(k): str(v) for k, v in (os.environ if base is None else base).items()}
    if domain_id is None:
        avoid = set()
        if env.get('ROS_DOMAIN_ID', '').isdigit():
            avoid.add(int(env['ROS_DOMAIN_ID']))
        domain_id = random_domain_id(avoid)
    if not 0 <= int(domain_id) <= 232:
        raise ValueError(f'ROS_DOMAIN_ID {domain_id} is outside the usable range 0..232')
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_DOMAIN_ID'] = str(int(domain_id))
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(fastdds_profile_path())
    env['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    return env
