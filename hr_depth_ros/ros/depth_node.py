"""The depth node (rclpy, managed): camera images in, metric depth, colourised depth and point clouds out.

    ros2 run hr_depth_ros depth_node --ros-args --params-file config/depth.yaml -p weights:=<folder>
    python -m hr_depth_ros.ros.depth_node --ros-args -p weights:=<folder> -r image:=/camera/image_raw

Topics (relative, remap them): in ``image`` (sensor_msgs/Image) or ``image/compressed``
(``image_transport:=compressed``), ``camera_info``; out ``depth`` (32FC1 metres, NaN invalid),
``depth/camera_info``, ``depth/colored`` (bgr8), ``points`` (PointCloud2) and
``~/statistics`` (std_msgs/String holding JSON). Outputs carry the input header.

Lifecycle (``rclpy.lifecycle``, services ``~/change_state``, ``~/get_state``): configure
validates the parameters, loads the weights, builds the backend and runs one warm-up inference
(so that compilation and errors such as out of memory happen there); activate subscribes and
starts the worker; deactivate unsubscribes, stops the worker and returns cached GPU memory;
cleanup frees the model. A failing configure logs the reason and returns FAILURE (the node
stays unconfigured; fix the parameters and configure again). With ``autostart`` (default) the
node configures and activates itself on start-up and exits 1 if that fails, as before.

Frames arriving while nobody subscribes to an output are skipped (``idle_no_subscribers`` in
``~/statistics``). Subscription callbacks only store the newest frame (a one-slot mailbox;
overwritten frames count as dropped); a worker thread processes it with the ROS-free
:class:`~hr_depth_ros.core.depth_engine.DepthEngine`; messages are built in :mod:`hr_depth_ros.ros.ros_messages`.
"""
from __future__ import annotations

import gc
import json
import sys
import threading
import time
from typing import Any

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String

from hr_depth_ros.ros import ros_messages
from hr_depth_ros.ros.adaptation import NodeAdaptation
from hr_depth_ros.core.depth_engine import (  # noqa: F401 - checkpoint_intrinsics: public name
    DepthEngine,
    FrameStatistics,
    InputChecker,
    checkpoint_intrinsics,
    elapsed_ms,
    release_cached_gpu_memory,
)
from hr_depth_ros.core.depth_options import (  # noqa: F401 - NODE_NAME: public name
    NODE_NAME,
    PARAMETER_NAMES,
    PARAMETERS,
    PARAMETERS_BY_NAME,
    ConfigError,
    NodeConfig,
    constraints,
)
from hr_depth_ros.core.image_decoding import shorten
from hr_depth_ros.core.log_limit import LogLimiter

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


def _declare_parameters(node: Any) -> None:
    """Declare every entry of PARAMETERS on ``node`` with its descriptor.

    ``read_only`` specs stay settable while the node is unconfigured (the node's set-parameters
    callback refuses them once configured), so a failed configure can be fixed in place.
    """
    for spec in PARAMETERS:
        descriptor = ParameterDescriptor(
            name=spec.name, description=spec.description, additional_constraints=constraints(spec),
            dynamic_typing=spec.value_type is float)
        bounded = spec.min_value is not None and spec.max_value is not None
        if bounded and spec.value_type is int:
            descriptor.integer_range = [
                IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value), step=1)]
        elif bounded and spec.value_type is float:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(spec.min_value), to_value=float(spec.max_value), step=0.0)]
        node.declare_parameter(spec.name, spec.default, descriptor)


class DepthNode(LifecycleNode):
    """Managed rclpy adapter over :class:`~hr_depth_ros.core.depth_engine.DepthEngine` (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        _declare_parameters(self)
        self.config: NodeConfig | None = None  # set while configured
        self.engine: DepthEngine | None = None
        self.stats = FrameStatistics()
        self.mailbox_lock = threading.Condition()
        self.mailbox: tuple[Any, bool, float] | None = None
        self.input_checker = InputChecker(self._warn)
        self.last_result_info: dict[str, Any] = {}
        self.log_limit = LogLimiter()
        self.outputs: list[Any] = []
        self.inputs: list[Any] = []
        self.stats_timer: Any = None
        self.worker: threading.Thread | None = None
        self.stopping = False
        self.idle = False
        self.adaptation = NodeAdaptation(self)  # parameter adapt (off: nothing changes)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- lifecycle transitions
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Validate the parameters, load the weights, build the backend and the publishers."""
        try:
            self.config = NodeConfig.from_values({name: self.get_parameter(name).value for name in PARAMETER_NAMES})
            estimator = self._load_estimator(self.adaptation.configure(self.config))
            self.engine = DepthEngine(estimator, self.config, checkpoint_intrinsics(
                getattr(estimator.checkpoint, 'metadata', None)))
            self.adaptation.build(self.engine)
        except Exception as error:  # ConfigError, CheckpointError, ...: reported through the transition
            self.config = self.engine = None
            self.adaptation.release()
            self.get_logger().error(f'configure failed: {type(error).__name__}: {error}')
            return FAILURE
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.config.qos_depth,
                                reliability=ReliabilityPolicy.RELIABLE)
        self.depth_pub = self.create_lifecycle_publisher(Image, 'depth', output_qos)
        self.depth_info_pub = self.create_lifecycle_publisher(CameraInfo, 'depth/camera_info', output_qos)
        self.colored_pub = self.create_lifecycle_publisher(Image, 'depth/colored', output_qos)
        self.points_pub = self.create_lifecycle_publisher(PointCloud2, 'points', output_qos)
        self.stats_pub = self.create_lifecycle_publisher(String, '~/statistics', 10)
        self.outputs = [self.depth_pub, self.depth_info_pub, self.colored_pub, self.points_pub]
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Subscribe to the inputs (QoS from qos_* and qos_overrides.*), start the worker and statistics."""
        config = self.config
        reliability = (ReliabilityPolicy.BEST_EFFORT if config.qos_reliability == 'best_effort'
                       else ReliabilityPolicy.RELIABLE)

        def subscribe(msg_type: Any, topic: str, callback: Any) -> Any:
            # A profile per subscription: rclpy writes the qos_overrides.<topic>.* values into it.
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=config.qos_depth, reliability=reliability)
            return self.create_subscription(msg_type, topic, callback, qos,
                                            qos_overriding_options=QoSOverridingOptions.with_default_policies())

        if config.image_transport == 'compressed':
            self.image_sub = subscribe(CompressedImage, 'image/compressed', lambda m: self._on_image(m, True))
        else:
            self.image_sub = subscribe(Image, 'image', lambda m: self._on_image(m, False))
        self.info_sub = subscribe(CameraInfo, 'camera_info',
                                  lambda m: self.input_checker.on_camera_info(m, self.info_sub.topic_name))
        self.inputs = [self.image_sub, self.info_sub]
        self.stopping = False
        self.worker = threading.Thread(target=self._work_loop, name='hr_depth_worker', daemon=True)
        self.worker.start()
        self.stats_timer = self.create_timer(config.statistics_period, self._publish_statistics)
        self.adaptation.activate()
        estimator = self.engine.estimator
        self.get_logger().info(
            f'ready: {estimator.arch} {estimator.width}x{estimator.height} on {estimator.device} '
            f'({getattr(estimator, "precision", "")}, {getattr(estimator, "backend_description", "torch")}); '
            f'listening on {self.image_sub.topic_name} ({config.qos_reliability}), '
            f'output {config.output_resolution} resolution')
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Unsubscribe, stop the worker and statistics, return cached GPU memory."""
        self._stop_work()
        release_cached_gpu_memory()
        self.get_logger().info('inactive: not subscribed to the inputs')
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Drop the publishers and the model."""
        self._release()
        self.get_logger().info('unconfigured: model released')
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_work()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._stop_work()
        self._release()
        return super().on_error(state)

    def _stop_work(self) -> None:
        self.adaptation.deactivate()
        for subscription in self.inputs:
            self.destroy_subscription(subscription)
        self.inputs = []
        if self.stats_timer is not None:
            self.destroy_timer(self.stats_timer)
            self.stats_timer = None
        if self.worker is not None:
            with self.mailbox_lock:
                self.stopping = True
                self.mailbox = None
                self.mailbox_lock.notify_all()
            self.worker.join(timeout=10.0)
            self.worker = None

    def _release(self) -> None:
        for publisher in (*self.outputs, getattr(self, 'stats_pub', None)):
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
        self.outputs = []
        self.stats_pub = None
        self.adaptation.release()
        self.engine = self.config = self.input_checker.camera_info = None
        gc.collect()
        release_cached_gpu_memory()

    def _load_estimator(self, config: NodeConfig) -> Any:
        """The DepthEstimator, after one warm-up inference; its own rules pick the precision (fp32 on the CPU)."""
        from hr_depth_ros.core.inference import DepthEstimator, select_device

        if config.precision == 'int8':
            self.get_logger().info(
                'precision int8: the first start with these weights and calibration frames quantises the model '
                '(tens of seconds on a small CPU); later starts load it from the model cache')
        try:
            select_device(config.device)  # an explicit GPU that is not there is refused, with the reason
        except ValueError as error:
            raise ConfigError(f'parameter {error}') from None
        try:
            estimator = DepthEstimator.from_config(config)
        except Exception as error:
            raise ConfigError(f'cannot load the checkpoint weights={config.weights!r}: '
                              f'{type(error).__name__}: {error}') from error
        try:  # compilation, cuDNN set-up, a missing bf16 kernel, out of memory: here, not on every frame
            warm_up_s = estimator.warm_up()
        except Exception as error:
            raise ConfigError(f'the first inference failed on {estimator.device} ({estimator.precision}, '
                              f'{estimator.backend_description}): {type(error).__name__}: {error}') from error
        self.get_logger().info(f'first inference (warm-up) in {warm_up_s:.2f} s')
        if config.device == 'auto' and estimator.device.type == 'cpu':
            self.get_logger().warning('CUDA is not available: running on the CPU (slow)')
        metadata = getattr(estimator.checkpoint, 'metadata', None) or {}
        if estimator.metric_scale is not None:
            self.get_logger().info(
                f'the checkpoint is metric (fine-tuned with metric poses, metric_scale '
                f'{estimator.metric_scale:.4g}): publishing metres x depth_scale {config.depth_scale:g}')
        elif metadata.get('use_stereo') and config.depth_scale == 1.0 and config.scale_mode == 'fixed':
            self.get_logger().warning(
                'the checkpoint was trained with stereo (use_stereo): set depth_scale:=5.4 for metric depth')
        if 'intrinsics' not in metadata and not config.manual_intrinsics:
            self.get_logger().info('intrinsics: from camera_info; until one arrives, KITTI-like defaults')
        return estimator

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        """While configured: refuse read-only parameters, validate the rest together and apply them."""
        ours = [p for p in parameters if p.name in PARAMETERS_BY_NAME]  # not qos_overrides.*
        if self.config is None or not ours:
            return SetParametersResult(successful=True)  # checked by the next configure
        values = self.config.as_dict()
        for parameter in ours:
            if PARAMETERS_BY_NAME[parameter.name].read_only:
                return SetParametersResult(successful=False, reason=f'{parameter.name} is read-only while '
                                           'configured (deactivate and cleanup to change it)')
            values[parameter.name] = parameter.value
        try:
            new_config = NodeConfig.from_values(values, partial_intrinsics=True)  # fx, fy, cx, cy one at a time
        except ConfigError as error:
            return SetParametersResult(successful=False, reason=str(error))
        manual = {name: values[name] for name in ('fx', 'fy', 'cx', 'cy')}
        if any(value > 0 for value in manual.values()) and not new_config.manual_intrinsics:
            unset = [name for name, value in manual.items() if value <= 0]
            self.get_logger().info(f'intrinsics parameters: {", ".join(unset)} still unset; K from fx, fy, cx, cy '
                                   'is used once all four are set')
        self.config = self.engine.config = new_config
        return SetParametersResult(successful=True)

    # -- callbacks: store only
    def _listening(self) -> bool:
        return any(publisher.get_subscription_count() > 0 for publisher in self.outputs)

    def _on_image(self, msg: Any, compressed: bool) -> None:
        if not self._listening():
            self.stats.on_received(False)
            self.stats.on_skipped()
            if not self.idle:
                self.idle = True
                self.get_logger().info('idle: nobody subscribes to depth, depth/colored, points or '
                                       'depth/camera_info; skipping frames')
            return
        if self.idle:
            self.idle = False
            self.get_logger().info('a subscriber appeared: processing frames again')
        with self.mailbox_lock:
            overwritten = self.mailbox is not None
            self.mailbox = (msg, compressed, time.monotonic())
            self.mailbox_lock.notify()
        self.stats.on_received(overwritten)

    # -- worker
    def _work_loop(self) -> None:
        while True:
            with self.mailbox_lock:
                while self.mailbox is None and not self.stopping:
                    self.mailbox_lock.wait(0.5)
                if self.stopping:
                    return
                msg, compressed, _ = self.mailbox
                self.mailbox = None
            try:
                self.adaptation.set_busy(True)
                self._process(msg, compressed)
            except Exception as error:  # keep serving; a bug in one frame must not kill the node
                self.stats.on_bad_frame()
                self._warn(f'failed {type(error).__name__}',
                           f'frame failed: {type(error).__name__}: {shorten(error, 300)}', error=True)
            finally:
                self.adaptation.set_busy(False)

    def _warn(self, reason: str, text: str, error: bool = False) -> None:
        """Log ``text`` unless ``reason`` was logged recently or too much was (see LogLimiter)."""
        suppressed = self.log_limit.allow(reason)
        if suppressed is None:
            return
        if suppressed:
            text += f' ({suppressed} similar lines suppressed)'
        if error:  # rclpy wants one severity per call site
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    def _process(self, msg: Any, compressed: bool) -> None:
        engine = self.engine
        engine.estimator = self.adaptation.serving(engine.estimator)  # an accepted model swaps in between frames
        start = time.perf_counter()
        rgb = self.input_checker.decode(msg, compressed, engine.config.max_pixels, self.image_sub.topic_name)
        if rgb is None:
            self.stats.on_bad_frame()
            return
        decode_ms = elapsed_ms(start)
        camera_info = self.input_checker.camera_info_for((rgb.shape[1], rgb.shape[0]), self.info_sub.topic_name)
        result = engine.process(rgb, camera_info, want_colored=self.colored_pub.get_subscription_count() > 0,
                                want_points=self.points_pub.get_subscription_count() > 0)
        start = time.perf_counter()
        header = msg.header
        height, width = result.depth.shape
        self.depth_pub.publish(ros_messages.image_msg(result.depth, '32FC1', header))
        self.depth_info_pub.publish(ros_messages.camera_info_msg(result.K, width, height, header))
        if result.colored_bgr is not None:
            self.colored_pub.publish(ros_messages.image_msg(result.colored_bgr, 'bgr8', header))
        if result.cloud is not None:
            self.points_pub.publish(ros_messages.packed_cloud_msg(result.cloud, header))
        timings = dict(result.timings_ms, decode=decode_ms, publish=elapsed_ms(start))
        stamp_ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
        self.stats.on_processed((self.get_clock().now().nanoseconds - stamp_ns) / 1e6, timings)
        self.last_result_info = {'scale': round(result.scale, 6), 'intrinsics_source': result.intrinsics_source,
                                 'output_size': [width, height]}
        # The frame as the network saw it: rectified when the camera has a lens (its K is result.K's camera).
        self.adaptation.on_frame(result.image, stamp_ns, header.frame_id, result.K, (width, height))

    def _publish_statistics(self) -> None:
        extra = dict(self.last_result_info, idle_no_subscribers=not self._listening())
        self.stats_pub.publish(String(data=json.dumps(self.stats.snapshot(extra))))
        self.adaptation.publish_status()

    def destroy_node(self) -> None:
        self._stop_work()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Run the node until shutdown; with autostart, returns 1 (after logging why) when it cannot start."""
    rclpy.init(args=sys.argv if argv is None else argv)
    logger = rclpy.logging.get_logger(NODE_NAME)
    node = None
    try:
        try:
            node = DepthNode()
            if node.get_parameter('autostart').value:
                for step, trigger in (('configure', node.trigger_configure), ('activate', node.trigger_activate)):
                    if trigger() != SUCCESS:
                        raise RuntimeError(f'autostart: {step} failed (see the reason above)')
        except Exception as error:  # parameter exceptions, a failed autostart transition, ...
            logger.fatal(f'cannot start: {type(error).__name__}: {error}')
            return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - e.g. take_message's RuntimeError when SIGINT lands mid-conversion
        if rclpy.ok():  # not a shutdown (SIGINT / SIGTERM shut the context down first): a real failure
            raise
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
