"""DDS stays on loopback with one variable, the one the ROS distribution reads, so that nothing
prints Jazzy's `ROS_LOCALHOST_ONLY is deprecated` warning."""
import os
import subprocess
from pathlib import Path

import pytest

from lightmer.harness.rig import loopback_env, loopback_variables

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('distro, expected', [
    ('', {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}),          # pip install: Jazzy
    ('jazzy', {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}),
    ('kilted', {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}),
    ('humble', {'ROS_LOCALHOST_ONLY': '1'}),
])
def test_one_variable_per_distribution(distro, expected):
    assert loopback_variables(distro) == expected


@pytest.mark.parametrize('distro', ['', 'humble'])
def test_the_shell_wrapper_sets_the_same_variable(distro):
    env = {k: v for k, v in os.environ.items()
           if k not in ('ROS_LOCALHOST_ONLY', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DISTRO')}
    env.update({'ROS_DISTRO': distro, 'LIGHTMER_NO_NETNS': '1'})
    out = subprocess.run(['bash', str(REPO / 'scripts' / 'loopback.sh'), 'env'], env=env,
                         capture_output=True, text=True, check=True).stdout
    seen = {k: v for k, v in (line.split('=', 1) for line in out.splitlines() if '=' in line)
            if k in ('ROS_LOCALHOST_ONLY', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    assert seen == loopback_variables(distro)


def test_a_node_process_starts_without_the_deprecation_warning(tmp_path):
    """A real rclpy context in a child with the tools' environment: rcl prints nothing about
    ROS_LOCALHOST_ONLY (it did while both variables were set)."""
    code = ('import rclpy; rclpy.init(); n = rclpy.create_node("loopback_probe"); '
            'n.destroy_node(); rclpy.shutdown(); print("up")')
    env = loopback_env({k: v for k, v in os.environ.items() if k != 'ROS_LOCALHOST_ONLY'})
    proc = subprocess.run([str(REPO / '.venv' / 'bin' / 'python'), '-c', code], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and 'up' in proc.stdout, proc.stderr
    assert 'ROS_LOCALHOST_ONLY' not in proc.stderr, proc.stderr
