"""Files the package ships (``config/``, ``models/``): found in the installed share directory of
a ROS install first, else in the source checkout (ROS-free; ament_index is optional)."""
from __future__ import annotations

from pathlib import Path

PACKAGE = 'hr_depth_ros'
SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The checkout holding this package (its ``config/`` and ``models/``) when run from source."""


def installed_share() -> Path | None:
    """``share/hr_depth_ros`` of the sourced ROS install, or None (not installed / no ament_index)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, LookupError, OSError, ValueError):  # not installed / no AMENT_PREFIX_PATH
        return None


def package_file(relative: str | Path) -> Path:
    """``relative`` (e.g. ``config/depth.yaml``) in the installed share, else in the source checkout.

    Raises FileNotFoundError naming every place looked at.
    """
    places = [root / relative for root in (installed_share(), SOURCE_ROOT) if root is not None]
    for place in places:
        if place.exists():
            return place
    raise FileNotFoundError(f'{relative} of {PACKAGE} not found (looked at: {", ".join(map(str, places))})')
