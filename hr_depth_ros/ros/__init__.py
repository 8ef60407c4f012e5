"""ROS 2 adapters over the core: the depth and fine-tuning nodes, NumPy <-> ``sensor_msgs``
conversion, the bag player, the local DDS transport settings and the graph probe the demo, the
benchmarks and the tests drive nodes with.

Imports ``hr_depth_ros.core`` only (never ``hr_depth_ros.tools``; the fine-tuning node starts the
``finetune`` command line as a process under torchrun, the one listed exception).
"""
