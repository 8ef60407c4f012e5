"""hr_depth_ros: HR-Depth / Lite-HR-Depth monocular depth for ROS 2.

Everything in this package except ``depth_node``, ``finetune_node``, ``play_bag`` and
``ros_messages`` imports without rclpy, so a training server without ROS can use it.
"""

import os

__version__ = '0.1.0'

MAX_PIXELS_LIMIT = 1 << 28
"""Largest image (width x height) OpenCV decodes in any module of this package (about 268 MP)."""
# OpenCV reads its decoder size limit once, when it is loaded: set it before any submodule imports cv2.
os.environ.setdefault('OPENCV_IO_MAX_IMAGE_PIXELS', str(MAX_PIXELS_LIMIT))
