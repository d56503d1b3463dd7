"""StreamSettings: how the nodes process their streams, beyond what the checkpoint fixes."""
from __future__ import annotations

from dataclasses import dataclass

from lightmer.core.features import (
    MIN_FACE_SIZE,
)
from lightmer.core.segments import (
    REFERENCES,
)

MISSING_POLICIES = ('skip', 'nearest', 'single')


@dataclass(frozen=True)
class StreamSettings:
    """How the three nodes process their streams, beyond what the checkpoint fixes.

    Named and defaulted as the nodes' ROS parameters, and defined only here: `ros.params`
    declares the parameters with these defaults, and eval-bag, the benchmark and the demo build
    the processors (or the nodes' parameter file) from an instance.
    """

    reference: str = 'centre'          # segment reference time: 'centre' (as trained) | 'start'
    min_face_size: int = MIN_FACE_SIZE  # smallest face MTCNN looks for, pixels
    gap_tolerance_s: float = 0.05      # chunk stamp mismatch still continuous audio, seconds
    # Publish a window once this many of its N segments are cached (at most N; 0 = all N).
    # 2: a 1.5 s utterance holds 3 segments at T = 0.5 s (CREMA-D models) but may hold only 2
    # at T = 0.6 s (RAVDESS); measured against accuracy in docs/ROBOT_OPERATIONS.md.
    min_segments: int = 2
    # A segment with one modality: 'skip' it | 'nearest' (borrow a neighbour's) | 'single'
    # (fuse it with core.missing's input for the other: for models trained with modality
    # dropout, which saw that input; docs/MISSING_MODALITY.md).
    missing_policy: str = 'skip'
    missing_wait_s: float = 2.0        # how long (stamp seconds) a half segment waits
    nearest_max_segments: int = 2      # 'nearest': the farthest segment to borrow from
    # A forward stamp step at least this long is a jump (a clock set, a replay seek, an outage
    # of hours), logged and counted once rather than as the segments it skipped. Seconds.
    stamp_jump_s: float = 10.0
    # A hole at least this long between the stamps of two inputs of one fuser stream (its node
    # restarting, its sensor stalled) ends the run of windows: no window averages segments
    # from both sides; the fusion node's /diagnostics also warns after this long. Seconds.
    stall_warn_s: float = 3.0
    # Face detection follows the faces of the last segment (stream.follow) and searches the
    # whole frame at least every this many segments (1: every segment, no following). A person
    # who comes into view beside a followed one is found up to follow_every - 1 segments late
    # (3: 1 s at T = 0.5 s); larger values save more (docs/RUNTIME.md).
    follow_every: int = 3

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f'reference must be one of {REFERENCES}, got {self.reference!r}')
        if self.missing_policy not in MISSING_POLICIES:
            raise ValueError(f'missing_policy must be one of {MISSING_POLICIES}, '
                             f'got {self.missing_policy!r}')
        if self.min_face_size < 1 or self.min_segments < 0 or self.nearest_max_segments < 1:
            raise ValueError('min_face_size must be >= 1, min_segments >= 0 and '
                             'nearest_max_segments >= 1')
        if self.gap_tolerance_s < 0 or self.missing_wait_s < 0:
            raise ValueError('gap_tolerance_s and missing_wait_s must be >= 0')
        if not self.stamp_jump_s > self.gap_tolerance_s:
            raise ValueError(f'stamp_jump_s ({self.stamp_jump_s}) must exceed '
                             f'gap_tolerance_s ({self.gap_tolerance_s})')
        if self.follow_every < 1:
            raise ValueError(f'follow_every must be >= 1 (1 = the whole frame every segment), '
                             f'got {self.follow_every}')
        if not self.stall_warn_s > 0:
            raise ValueError(f'stall_warn_s must be > 0, got {self.stall_warn_s}')

    def window_minimum(self, n_segments: int) -> int:
        """Segments a window needs before it is published: min_segments, at most N (0 = N)."""
        return min(self.min_segments or n_segments, n_segments)
