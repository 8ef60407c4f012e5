"""ament_python package setup for hr_depth_ros."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'hr_depth_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.rviz') + glob('config/*.xml')),
        # the demo's checkpoint (synthetic data only), found by hr_depth_ros.core.resources.package_file
        ('share/' + PACKAGE + '/models/lite_hr_depth_synthetic', glob('models/lite_hr_depth_synthetic/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='hr_depth_ros maintainers',
    maintainer_email='maintainers@hr-depth-ros.dev',
    description='HR-Depth / Lite-HR-Depth monocular depth for ROS 2: depth node and self-supervised fine-tuning.',
    license='MIT',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'depth_node = hr_depth_ros.ros.depth_node:main',
            'finetune_node = hr_depth_ros.ros.finetune_node:main',
            'finetune = hr_depth_ros.tools.finetune:main',
            'predict = hr_depth_ros.tools.predict:main',
            'play_bag = hr_depth_ros.ros.play_bag:main',
            'make_synthetic_bag = hr_depth_ros.tools.make_synthetic_bag:main',
            'demo = hr_depth_ros.tools.demo:main',
        ],
    },
)
