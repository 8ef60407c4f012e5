"""hr_depth_ros: HR-Depth / Lite-HR-Depth monocular depth for ROS 2.

Three sub-packages, imports one way (tools -> ros -> core):

- ``hr_depth_ros.core``: ROS-free (networks, checkpoints, inference, geometry, bags, TF poses, training);
  a training server without ROS imports it.
- ``hr_depth_ros.ros``: the rclpy adapters (nodes, message conversion, bag player, DDS transport).
- ``hr_depth_ros.tools``: command-line tools (finetune, predict, demo, synthetic data).

See docs/ARCHITECTURE.md.
"""

import os

__version__ = '0.1.0'

MAX_PIXELS_LIMIT = 1 << 28
"""Largest image (width x height) OpenCV decodes in any module of this package (about 268 MP)."""
# OpenCV reads its decoder size limit once, when it is loaded: set it before any submodule imports cv2.
os.environ.setdefault('OPENCV_IO_MAX_IMAGE_PIXELS', str(MAX_PIXELS_LIMIT))
