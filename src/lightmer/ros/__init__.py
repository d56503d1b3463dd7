"""ROS 2 side of lightmer: message conversions, QoS, parameters, the three nodes, bringup.

Node files are thin: messages -> arrays (`conversions`), the message-free processors in
`lightmer.stream.fuser`, arrays -> messages. `description` is the one list of nodes that the launch
file and `lightmer bringup` both start.
"""
