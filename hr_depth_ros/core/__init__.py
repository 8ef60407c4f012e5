"""The ROS-free core: networks, checkpoints, inference backends, the depth node's option table and
engine, geometry, evaluation, bag reading, TF poses and the fine-tuning pipeline (``training``).

Nothing under ``hr_depth_ros.core`` imports rclpy, ROS message packages, ``hr_depth_ros.ros`` or
``hr_depth_ros.tools`` (test/test_package_build.py enforces it): a training server without ROS
imports it as it is.
"""
