"""``--bag`` arguments -> the bags they name: bags, folders holding bags, glob patterns (ROS-free).

What a bag is: :func:`hr_depth_ros.core.bags.is_bag` (a rosbag2 folder, with ``metadata.yaml`` or,
cut short, of ``.db3`` / ``.mcap`` files without it; a ROS 1 ``.bag`` file). A folder that is not
itself a bag is searched recursively (hidden folders skipped, so frame caches are never taken for
bags); a pattern matches bags and folders of bags. Bags named twice are read once; the order is the
order of the arguments, then sorted paths.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from hr_depth_ros.core.bags import is_bag

__all__ = ['bags_in', 'expand_bags']


def bags_in(folder: Path) -> list[Path]:
    """Bags in ``folder`` (itself, when it is one), found recursively, sorted."""
    if is_bag(folder):
        return [folder]
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        here = Path(root)
        for name in list(dirs):
            if is_bag(here / name):
                found.append(here / name)
                dirs.remove(name)  # a bag's own folder is not searched further
        found += [here / f for f in sorted(files) if f.endswith('.bag')]
    return sorted(found)


def expand_bags(specs: Sequence[str | Path]) -> list[Path]:
    """The bags named by ``specs``; ValueError naming the argument that names none.

    A path that does not exist is passed on as it is (the bag reader names it).
    """
    bags: list[Path] = []
    for spec in specs:
        text = os.path.expanduser(str(spec))
        if glob.has_magic(text):
            found = [bag for match in sorted(glob.glob(text)) for bag in bags_in(Path(match))]
            if not found:
                raise ValueError(f'--bag {spec}: the pattern matches no bag (rosbag2 folder or ROS 1 .bag file)')
        elif Path(text).is_dir():
            found = bags_in(Path(text))
            if not found:
                raise ValueError(f'--bag {spec}: the folder holds no bag (no rosbag2 folder with metadata.yaml or '
                                 '.db3/.mcap files, no ROS 1 .bag file)')
        else:
            found = [Path(text)]
        bags += [bag for bag in found if bag not in bags]
    return bags
