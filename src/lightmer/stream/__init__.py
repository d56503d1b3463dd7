"""The stream layer: the message-free processors that the three nodes wrap.

Settings of a stream (settings), a camera cut into segments (faces), a microphone cut into
segments (audio), segments fused into windows (fuser), several people (people, tracking), and
the three nodes chained in one process without DDS (pipeline). Imports core only.
"""
