"""The evaluation layer: recorded robots (rosbag2 files) and how well a model reads them.

Bags written and read without ROS (bags, bag_corpus, two_people), `lightmer eval-bag` offline
(evaluate) and the scoring of windows against labelled clips (scoring, people_scoring).
Imports core, stream and datasets.
"""
