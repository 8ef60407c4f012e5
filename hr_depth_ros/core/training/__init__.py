"""Offline self-supervised fine-tuning from rosbags (ROS-free): data, losses, trainer."""
