"""ros2 launch lightmer emotion.launch.py model:=/path/to/model.pt [camera_topic:=...] ...

Starts face_crop_node, audio_feature_node and fusion_node from the one node description in
lightmer.ros.description (`lightmer bringup` starts the same nodes in one process from it).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from lightmer.ros.description import LAUNCH_ARGUMENTS, PACKAGE, resolve


def _nodes(context, *args, **kwargs):
    # Resolved here (not as substitutions) so that launch and bringup share `resolve`.
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    return [
        # The overrides go in a file of their own, after the user's (see description.py):
        # a dict here would land under /**, behind the file's node-specific blocks.
        Node(package=PACKAGE, executable=n.executable, name=n.name,
             namespace=n.namespace or None, parameters=n.parameter_files(),
             remappings=list(n.remappings), respawn=n.respawn,
             respawn_delay=n.respawn_delay, output='screen')
        for n in resolve(values)
    ]


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
          for a in LAUNCH_ARGUMENTS),
        OpaqueFunction(function=_nodes),
    ])
