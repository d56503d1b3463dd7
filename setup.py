"""ament_python packaging for lightmer (works with colcon and with a plain pip install)."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'lightmer'

setup(
    name=package_name,
    version='0.1.0',
    package_dir={'': 'src'},
    packages=find_packages('src'),
    # The labelling page (`lightmer label`) is served from these files.
    package_data={package_name: ['labelling/page/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        # checkpoints (and ONNX exports with their descriptions) put in models/; see its README
        ('share/' + package_name + '/models',
         ['models/README.md', *glob('models/*.pt'), *glob('models/*.onnx'),
          *glob('models/*.json')]),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='lightmer developers',
    maintainer_email='lightmer@example.org',
    description='Lightweight audio-visual emotion recognition for ROS 2 robots.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'lightmer = lightmer.cli:main',
            'face_crop_node = lightmer.ros.start:face_crop_node',
            'audio_feature_node = lightmer.ros.start:audio_feature_node',
            'fusion_node = lightmer.ros.start:fusion_node',
        ],
    },
)
