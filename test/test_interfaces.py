"""The interface packages built here are wire-compatible with the upstream ones robots use."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rclpy
from audio_common_msgs.msg import AudioData, AudioDataStamped
from hri_msgs.msg import Expression, IdsList
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from vision_msgs.msg import Classification, ObjectHypothesis

from polling import wait_until

# Upstream definitions, written out field by field (comments do not enter the hash), so that
# this test checks interfaces/ against them rather than against itself.
UPSTREAM = {
    'vision_msgs/msg/ObjectHypothesis': 'string class_id\nfloat64 score\n',
    'vision_msgs/msg/Classification':
        'std_msgs/Header header\nvision_msgs/ObjectHypothesis[] results\n',
    'vision_msgs/msg/VisionClass': 'uint16 class_id\nstring class_name\n',
    'vision_msgs/msg/LabelInfo':
        'std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n',
    'audio_common_msgs/msg/AudioData': 'uint8[] data\n',
    'audio_common_msgs/msg/AudioDataStamped':
        'std_msgs/Header header\naudio_common_msgs/AudioData audio\n',
    'audio_common_msgs/msg/AudioInfo':
        'uint8 channels\nuint32 sample_rate\nstring sample_format\nuint32 bitrate\n'
        'string coding_format\n',
    # ros4hri/hri_msgs (REP-155): constants do not enter the hash, a few are kept to show that
    # they parse.
    'hri_msgs/msg/IdsList': 'std_msgs/Header header\nstring[] ids\n',
    'hri_msgs/msg/IdsMatch':
        'int8 UNSET=0\nint8 VOICE=4\nstring id1\nint8 id1_type\nstring id2\nint8 id2_type\n'
        'float32 confidence\n',
    'hri_msgs/msg/Expression':
        'std_msgs/Header header\nstring NEUTRAL="neutral"\nstring SCARED="scared"\n'
        'string expression\nfloat32 valence\nfloat32 arousal\nfloat32 confidence\n',
}


@pytest.fixture(scope='module')
def typestore():
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name, definition in UPSTREAM.items():
        types.update(get_types_from_msg(definition, name))
    store.register(types)
    return store


@pytest.mark.parametrize('type_name', sorted(UPSTREAM))
def test_type_hash_equals_upstream_definition(typestore, type_name):
    package, _, msg = type_name.split('/')
    description = Path(sys.prefix) / 'share' / package / 'msg' / f'{msg}.json'
    hashes = json.loads(description.read_text())['type_hashes']
    built = next(h['hash_string'] for h in hashes if h['type_name'] == type_name)
    assert built == typestore.hash_rihs01(type_name)


def _assert_same_wire_format(typestore, rclpy_msg, rosbags_msg, type_name, msg_class):
    """Each side decodes the other's bytes to the same message, and the sizes agree.

    Bytes are not compared directly: Fast CDR leaves alignment padding uninitialised.
    """
    theirs = serialize_message(rclpy_msg)
    ours = bytes(typestore.serialize_cdr(rosbags_msg, type_name))
    assert len(theirs) == len(ours)
    assert deserialize_message(ours, msg_class) == rclpy_msg
    decoded = typestore.deserialize_cdr(theirs, type_name)
    assert bytes(typestore.serialize_cdr(decoded, type_name)) == ours


def test_cdr_interoperates_with_rosbags(typestore):
    msg = Classification()
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 12, 345, 'camera'
    msg.results = [ObjectHypothesis(class_id='happy', score=0.75),
                   ObjectHypothesis(class_id='sad', score=0.25)]
    types = typestore.types
    ours = types['vision_msgs/msg/Classification'](
        header=types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=12, nanosec=345), frame_id='camera'),
        results=[types['vision_msgs/msg/ObjectHypothesis'](class_id='happy', score=0.75),
                 types['vision_msgs/msg/ObjectHypothesis'](class_id='sad', score=0.25)])
    _assert_same_wire_format(typestore, msg, ours, 'vision_msgs/msg/Classification',
                             Classification)

    samples = np.arange(-5, 5, dtype='<i2').tobytes()
    audio = AudioDataStamped(audio=AudioData(data=list(samples)))
    audio.header.stamp.sec = 7
    ours = types['audio_common_msgs/msg/AudioDataStamped'](
        header=types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=7, nanosec=0), frame_id=''),
        audio=types['audio_common_msgs/msg/AudioData'](data=np.frombuffer(samples, np.uint8)))
    _assert_same_wire_format(typestore, audio, ours, 'audio_common_msgs/msg/AudioDataStamped',
                             AudioDataStamped)

    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=3, nanosec=9), frame_id='camera')
    ids = IdsList(ids=['anhyk', 'f2'])
    ids.header.stamp.sec, ids.header.stamp.nanosec, ids.header.frame_id = 3, 9, 'camera'
    _assert_same_wire_format(typestore, ids,
                             types['hri_msgs/msg/IdsList'](header=header, ids=['anhyk', 'f2']),
                             'hri_msgs/msg/IdsList', IdsList)
    expression = Expression(expression=Expression.SCARED, valence=-0.5, arousal=0.25,
                            confidence=0.75)
    expression.header.stamp.sec, expression.header.stamp.nanosec = 3, 9
    expression.header.frame_id = 'camera'
    ours = types['hri_msgs/msg/Expression'](header=header, expression='scared', valence=-0.5,
                                            arousal=0.25, confidence=0.75)
    _assert_same_wire_format(typestore, expression, ours, 'hri_msgs/msg/Expression', Expression)


PUBLISHER = textwrap.dedent('''
    import sys, time
    import rclpy
    from audio_common_msgs.msg import AudioDataStamped
    from vision_msgs.msg import Classification, ObjectHypothesis

    rclpy.init()
    node = rclpy.create_node('roundtrip_publisher')
    pub_c = node.create_publisher(Classification, 'emotion', 10)
    pub_a = node.create_publisher(AudioDataStamped, 'audio', 10)
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline:
        c = Classification()
        c.header.frame_id = 'camera'
        c.results = [ObjectHypothesis(class_id='angry', score=0.5)]
        pub_c.publish(c)
        a = AudioDataStamped()
        a.audio.data = [1, 2, 3, 250]
        pub_a.publish(a)
        rclpy.spin_once(node, timeout_sec=0.1)
    rclpy.shutdown()
''')


def test_roundtrip_between_two_processes_over_loopback(ros_env):
    publisher = subprocess.Popen([sys.executable, '-c', PUBLISHER, '30'], env=ros_env)
    context = rclpy.Context()
    rclpy.init(context=context)
    received = {}
    try:
        node = rclpy.create_node('roundtrip_subscriber', context=context)
        node.create_subscription(Classification, 'emotion',
                                 lambda m: received.setdefault('emotion', m), 10)
        node.create_subscription(AudioDataStamped, 'audio',
                                 lambda m: received.setdefault('audio', m), 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        try:
            wait_until(lambda: len(received) == 2, 25,
                       'an emotion and an audio message from the other process',
                       each=lambda: executor.spin_once(timeout_sec=0.1), interval_s=0.0,
                       describe=lambda: sorted(received))
        finally:
            executor.shutdown()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        publisher.terminate()
        publisher.wait(timeout=10)
    assert set(received) == {'emotion', 'audio'}, 'no messages crossed between the processes'
    assert received['emotion'].results[0].class_id == 'angry'
    assert received['emotion'].header.frame_id == 'camera'
    assert bytes(received['audio'].audio.data) == bytes([1, 2, 3, 250])
