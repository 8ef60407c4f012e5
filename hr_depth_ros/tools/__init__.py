"""Command-line tools: ``finetune`` (the ROS-free fine-tuning CLI), ``predict``, the one-command
``demo``, and the synthetic street renderer with its bag writer (``make_synthetic_bag``).

Tools use the core and, where they drive a node (the demo), the ROS adapters.
"""
