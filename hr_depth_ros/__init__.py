"""hr_depth_ros: HR-Depth / Lite-HR-Depth monocular depth for ROS 2.

Everything in this package except ``depth_node``, ``finetune_node``, ``play_bag`` and
``ros_messages`` imports without rclpy, so a training server without ROS can use it.
"""

__version__ = '0.1.0'
