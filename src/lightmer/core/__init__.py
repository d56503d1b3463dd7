"""The core layer: what every other layer builds on, and nothing of theirs.

Settings (config), the segment grid (segments), features and the face crop (features, mtcnn),
the network (model), self-describing checkpoints and their backends (checkpoint, backend,
export), the decoding of message fields (messages), entropy (uncertainty), atomic files
(atomic_io) and figures (plots). Imports no other lightmer package.
"""
