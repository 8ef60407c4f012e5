"""The depth node's online adaptation (parameter ``adapt``): rclpy glue over :mod:`hr_depth_ros.core.adaptation`.

With ``adapt`` true (and ``adapt_pose_source`` tf) the node also subscribes to ``/tf`` and
``/tf_static`` (``tf2_msgs``), hands them and every served frame to :class:`~hr_depth_ros.core.adaptation.OnlineAdaptation`,
swaps accepted models in between frames and publishes ``~/adaptation`` (std_msgs/String
holding JSON: state and reason, frames kept / still / without pose, steps, candidate vs serving
score, swaps, rejections, metric scale) with ``~/statistics``. With ``adapt`` false every method
here does nothing, so the node behaves exactly as without this module.
"""
from __future__ import annotations

import functools
import json
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from hr_depth_ros.core.adaptation import AdaptationConfig, OnlineAdaptation, rebuild_estimator, serving_config
from hr_depth_ros.core.depth_engine import DepthEngine
from hr_depth_ros.core.depth_options import ConfigError, NodeConfig
from hr_depth_ros.core.geometry import scale_intrinsics

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)  # as tf2's static listener


class NodeAdaptation:
    """One per depth node; the node calls it at each lifecycle transition and frame (see the module docstring)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.config: AdaptationConfig | None = None
        self.manager: OnlineAdaptation | None = None
        self.anchor = ''
        self.serving_config: NodeConfig | None = None
        self.subscriptions: list[Any] = []
        self.publisher: Any = None

    @property
    def enabled(self) -> bool:
        return self.config is not None and self.config.enabled

    def configure(self, config: NodeConfig) -> NodeConfig:
        """Take the adapt* parameters; the node config to load the serving model with (see serving_config)."""
        self.config = AdaptationConfig.from_node_config(config)
        if not self.config.enabled:
            return config
        if self.config.pose_source == 'tf':
            try:
                import tf2_msgs.msg  # noqa: F401 - needed for /tf
            except ImportError as error:
                raise ConfigError('adapt needs tf2_msgs to subscribe to /tf, and it is not importable: build it as '
                                  "the README's setup says (scripts/setup_venv.sh), set adapt_pose_source:=vo "
                                  '(camera only) or adapt:=false') from error
        self.anchor = config.weights
        serving, notes = serving_config(config, self.config)
        self.serving_config = serving
        for note in notes:
            self.node.get_logger().info(note)
        return serving

    def build(self, engine: DepthEngine) -> None:
        """The adaptation over the configured engine (and ``~/adaptation``); the worker starts at activate."""
        if not self.enabled:
            return
        estimator, config = engine.estimator, self.serving_config
        self.manager = OnlineAdaptation(
            self.config, estimator.checkpoint, self.anchor, functools.partial(rebuild_estimator, config), self._log,
            device=estimator.device.type, cache_dir=config.cache_dir,
            prepare='openvino' if estimator.backend == 'openvino' else '', min_depth=estimator.min_depth,
            max_depth=estimator.max_depth)
        self.publisher = self.node.create_lifecycle_publisher(String, '~/adaptation', 10)

    def activate(self) -> None:
        """Subscribe to /tf and /tf_static (pose source tf) and start the worker."""
        if self.manager is None:
            return
        manager = self.manager
        if self.config.pose_source == 'tf':
            from tf2_msgs.msg import TFMessage

            self.subscriptions = [
                self.node.create_subscription(TFMessage, '/tf', lambda m: manager.on_tf(m, False), TF_QOS),
                self.node.create_subscription(TFMessage, '/tf_static', lambda m: manager.on_tf(m, True),
                                              TF_STATIC_QOS)]
        manager.start()

    def deactivate(self) -> None:
        """Unsubscribe from TF and stop the worker (the serving model stays)."""
        for subscription in self.subscriptions:
            self.node.destroy_subscription(subscription)
        self.subscriptions = []
        if self.manager is not None:
            self.manager.stop()

    def release(self) -> None:
        """Cleanup: stop everything and forget the adaptation."""
        self.deactivate()
        if self.publisher is not None:
            self.node.destroy_lifecycle_publisher(self.publisher)
        self.publisher = self.manager = None

    def set_busy(self, busy: bool) -> None:
        if self.manager is not None:
            self.manager.set_busy(busy)

    def serving(self, estimator: Any) -> Any:
        """The estimator for the next frame (an accepted model swaps in here)."""
        return estimator if self.manager is None else self.manager.serving(estimator)

    def on_frame(self, rgb: Any, stamp_ns: int, frame_id: str, K_out: Any, out_size: tuple[int, int]) -> None:
        """A served frame: ``K_out`` are the intrinsics of the published depth (``out_size``), rescaled to ``rgb``."""
        if self.manager is None:
            return
        height, width = rgb.shape[:2]
        K = scale_intrinsics(K_out, width / out_size[0], height / out_size[1])
        self.manager.on_frame(rgb, stamp_ns, frame_id, K)

    def publish_status(self) -> None:
        if self.manager is not None and self.publisher is not None:
            self.publisher.publish(String(data=json.dumps(self.manager.status())))

    def _log(self, level: str, text: str) -> None:
        logger = self.node.get_logger()
        if level == 'error':
            logger.error(text)
        elif level == 'warning':
            logger.warning(text)
        else:
            logger.info(text)
