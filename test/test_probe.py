"""GraphProbe, the one rclpy harness of the demo, the benchmarks and the tests: two probes over local DDS."""
from __future__ import annotations

import pytest

from hr_depth_ros.ros.transport import local_ros_env


def test_a_probe_records_what_another_publishes():
    pytest.importorskip('rclpy')
    from std_msgs.msg import String

    from hr_depth_ros.ros.probe import GraphProbe

    domain = int(local_ros_env()['ROS_DOMAIN_ID'])
    sender, receiver = GraphProbe('probe_sender', '/probe_test', domain), GraphProbe('probe_receiver', domain_id=domain)
    try:
        publisher = sender.publisher(String, 'chatter')
        receiver.subscribe(String, '/probe_test/chatter', 'text', convert=lambda msg: msg.data)
        receiver.subscribe(String, '/probe_test/chatter', 'raw')
        assert GraphProbe.wait_until(lambda: sender.connected() and receiver.connected(), 30.0), 'DDS discovery'
        for index in range(3):
            publisher.publish(String(data=f'message {index}'))
        assert receiver.wait_for_messages('text', 3, 30.0)
        assert receiver.received('text') == ['message 0', 'message 1', 'message 2']  # reliable, in order
        assert [msg.data for msg in receiver.received('raw')] == receiver.received('text')
        arrivals = [arrival for arrival, _ in receiver.arrivals('text')]
        assert arrivals == sorted(arrivals) and arrivals[0] > 0
        receiver.clear()
        assert receiver.received('text') == [] and receiver.received('never subscribed') == []
        assert not receiver.wait_for_messages('text', 1, 0.2)
        assert GraphProbe.wait_until(lambda: 0, 0.05) is None
    finally:
        sender.close()
        receiver.close()
    assert not sender.context.ok() and not receiver.context.ok()
