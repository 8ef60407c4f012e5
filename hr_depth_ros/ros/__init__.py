"""ROS 2 adapters over the core: the depth and fine-tuning nodes, NumPy <-> ``sensor_msgs``
conversion, the bag player and the local DDS transport settings.

Imports ``hr_depth_ros.core`` only (never ``hr_depth_ros.tools``).
"""
