"""What `lightmer bench` feeds the model and the nodes: camera frames of one or two people and an
untrained checkpoint. Kept apart from `bench_nodes` so that the model's figures (`bench
--no-nodes`) need no ROS.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
from lightmer.core.model import LightmerNet

FRAME_HW = (480, 640)          # the benchmark camera


def camera_frame(people: int = 1) -> np.ndarray:
    """uint8 (480, 640, 3): a camera image of one or two people on a grey canvas.

    One: the scikit-image astronaut photo (top 480 rows, her face in the top half), centred.
    Two: her head and shoulders twice, side by side (the right one mirrored), 300 px each.
    """
    photo = data.astronaut()
    frame = np.full((*FRAME_HW, 3), 128, dtype=np.uint8)
    if people == 1:
        x0 = (FRAME_HW[1] - photo.shape[1]) // 2
        frame[:, x0:x0 + photo.shape[1]] = photo[:FRAME_HW[0]]
    elif people == 2:
        head = photo[:300, 110:410]                      # (300, 300, 3)
        frame[90:390, 10:310] = head
        frame[90:390, 330:630] = head[:, ::-1]
    else:
        raise ValueError(f'people must be 1 or 2, got {people}')
    return frame


def bench_frame_720p() -> np.ndarray:
    """uint8 (720, 1280, 3): the astronaut's head and shoulders, face ~120 px wide, on grey."""
    head = Image.fromarray(data.astronaut()[:300, 110:410]).resize((420, 420))
    frame = np.full((720, 1280, 3), 128, dtype=np.uint8)
    frame[150:570, 430:850] = np.asarray(head)
    return frame


def untrained_checkpoint(directory: Path) -> Path:
    """A CREMA-D-preset checkpoint of a freshly initialised model (seed 0) in `directory`."""
    torch.manual_seed(0)
    meta = meta_for_preset('crema-d', dataset='bench (untrained)')
    path = directory / 'bench_model.pt'
    save_checkpoint(path, LightmerNet(meta.model), meta)
    return path
