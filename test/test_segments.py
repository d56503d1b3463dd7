"""The temporal segment grid and the seeded frame / audio-centre choice."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightmer.core.segments import (
    choose_frames,
    jitter_centres,
    nearest_index,
    reference_time,
    segment_bounds,
    segment_index,
    segment_members,
    window_indices,
)


def test_segment_bounds_tile_the_clip():
    b = segment_bounds(2.5, 5)
    assert b.shape == (5, 2)
    np.testing.assert_allclose(b[:, 0], [0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(b[:, 1], [0.5, 1.0, 1.5, 2.0, 2.5])
    with pytest.raises(ValueError):
        segment_bounds(0.0, 5)
    with pytest.raises(ValueError):
        segment_bounds(1.0, 0)


FRAMES = np.arange(0.0, 3.0, 1 / 25)          # a 3 s clip at 25 fps


def test_inference_picks_the_frame_nearest_each_segment_centre():
    picks, centres = choose_frames(FRAMES, 3.0, 12)
    np.testing.assert_allclose(centres, (np.arange(12) + 0.5) * 0.25)
    np.testing.assert_array_equal(picks, [nearest_index(FRAMES, c) for c in centres])


def test_training_draws_are_seeded_and_deterministic():
    a = choose_frames(FRAMES, 2.4, 5, np.random.default_rng(7), 0.010)
    b = choose_frames(FRAMES, 2.4, 5, np.random.default_rng(7), 0.010)
    c = choose_frames(FRAMES, 2.4, 5, np.random.default_rng(8), 0.010)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(FRAMES[a[0]], a[1])       # jitter was applied


def test_jitter_spreads_over_plus_minus_10ms():
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(200):
        picks, centres = choose_frames(FRAMES, 2.0, 5, rng, 0.010)
        offsets.append(centres - FRAMES[picks])
    offsets = np.concatenate(offsets)
    assert offsets.min() < -0.008 and offsets.max() > 0.008
    assert np.abs(offsets).max() <= 0.010


@settings(max_examples=60, deadline=None, database=None)   # no .hypothesis dir in the tree
@given(duration=st.floats(0.05, 30.0), n=st.integers(1, 16), seed=st.integers(0, 2**32 - 1),
       jitter=st.floats(0.0, 0.05), fps=st.floats(1.0, 60.0))
def test_training_frames_fall_inside_their_segments(duration, n, seed, jitter, fps):
    times = np.arange(0.0, duration, 1 / fps)
    bounds = segment_bounds(duration, n)
    picks, centres = choose_frames(times, duration, n, np.random.default_rng(seed), jitter)
    assert picks.shape == centres.shape == (n,)
    frames = times[picks]
    assert np.all(np.abs(centres - frames) <= jitter + 1e-12)
    # a segment holding frames draws one of them; an empty one the frame nearest some time in
    # it: the span of times nearest that frame (halfway to its neighbours) meets the segment
    for s, inside in enumerate(segment_members(times, bounds)):
        if inside.size:
            assert picks[s] in inside
        else:
            i = picks[s]
            lo = (times[i - 1] + times[i]) / 2 if i > 0 else -np.inf
            hi = (times[i] + times[i + 1]) / 2 if i + 1 < times.size else np.inf
            assert lo <= bounds[s, 1] + 1e-12 and hi >= bounds[s, 0] - 1e-12


def test_nearest_index():
    times = np.array([0.0, 0.04, 0.08, 0.12])
    assert nearest_index(times, 0.05) == 1
    assert nearest_index(times, 0.06) == 1              # tie goes to the lower index
    assert nearest_index(times, 9.0) == 3
    with pytest.raises(ValueError):
        nearest_index(np.array([]), 0.0)


def test_streaming_grid():
    assert segment_index(0.3, 0.1) == 3                 # a boundary belongs to the next segment
    assert segment_index(0.2999, 0.1) == 2
    assert segment_index(1.49, 0.5) == 2
    assert reference_time(2, 0.5, 'centre') == pytest.approx(1.25)
    assert reference_time(2, 0.5, 'start') == pytest.approx(1.0)
    with pytest.raises(ValueError, match='reference'):
        reference_time(2, 0.5, 'middle')
    assert list(window_indices(6, 5)) == [2, 3, 4, 5, 6]
    assert list(window_indices(1, 3)) == [-1, 0, 1]
    for k in range(20):                                 # each reference time maps back to k
        assert segment_index(reference_time(k, 0.6, 'centre'), 0.6) == k
        assert segment_index(reference_time(k, 0.6, 'start'), 0.6) == k


def test_segment_members_are_half_open_with_the_last_segment_closed():
    bounds = segment_bounds(2.0, 4)                         # edges 0, 0.5, 1, 1.5, 2
    times = np.array([0.0, 0.25, 0.5, 0.99, 1.0, 1.5, 2.0, 2.01, -0.1])
    before = times.copy()
    members = segment_members(times, bounds)
    assert [m.tolist() for m in members] == [[0, 1], [2, 3], [4], [5, 6]]
    np.testing.assert_array_equal(times, before)            # pure
    # each time inside the clip is in exactly one segment
    grid = np.linspace(0.0, 2.0, 41)
    counts = np.zeros(grid.size, int)
    for m in segment_members(grid, bounds):
        counts[m] += 1
    assert np.all(counts == 1)
    with pytest.raises(ValueError):
        segment_members(times, bounds[:, 0])


def test_jitter_centres_is_seeded_bounded_and_pure():
    frames = np.linspace(0.1, 1.9, 50)
    before = frames.copy()
    a = jitter_centres(frames, np.random.default_rng(3), 0.010)
    b = jitter_centres(frames, np.random.default_rng(3), 0.010)
    np.testing.assert_array_equal(a, b)
    assert 0 < np.abs(a - frames).max() <= 0.010
    np.testing.assert_array_equal(frames, before)
    zero = jitter_centres(frames, np.random.default_rng(3), 0.0)
    np.testing.assert_array_equal(zero, frames)
    assert zero is not frames
    with pytest.raises(ValueError):
        jitter_centres(frames, np.random.default_rng(3), -0.001)
