"""The simulated robot's world the learning experiments share: draws of people, pooled
scoring equal to eval-bag, and intervals over replicates."""
import numpy as np
import pytest
from scipy import stats

from lightmer.evaluation import bags
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.experiments import robot_world as world
from lightmer.stream.settings import StreamSettings


def test_interval_is_students_t_over_replicates():
    values = [0.50, 0.55, 0.61, 0.48, 0.57]
    got = world.interval(values, level=0.90)
    half = stats.t.ppf(0.95, 4) * np.std(values, ddof=1) / np.sqrt(5)
    assert got['mean'] == pytest.approx(np.mean(values))
    assert (got['low'], got['high']) == pytest.approx((np.mean(values) - half,
                                                       np.mean(values) + half))
    assert world.interval([0.4])['low'] is None and world.interval([])['n'] == 0


def test_paired_interval_sees_a_consistent_difference_that_unpaired_spread_hides():
    base = np.array([0.30, 0.55, 0.42, 0.70, 0.38])      # replicates differ a lot
    better = base + np.array([0.04, 0.05, 0.03, 0.05, 0.04])
    paired = world.paired_interval(better, base)
    assert paired['low'] > 0                              # every replicate gained
    unpaired_low = world.interval(better)['low'] - world.interval(base)['high']
    assert unpaired_low < 0
    with pytest.raises(ValueError):
        world.paired_interval([1, 2], [1])


def test_draws_never_share_people_and_stay_in_the_layout():
    size = world.WorldSize(people=4)
    people = [set(range(world.PEOPLE_FIRST_ACTOR + d * 4, world.PEOPLE_FIRST_ACTOR + d * 4 + 4))
              for d in range(3)]
    assert not (people[0] & people[1]) and not (people[1] & people[2])
    with pytest.raises(ValueError, match='leaves actors'):
        world.people_draw(None, size, 'robot', None, number=20)


@pytest.mark.slow
def test_a_draw_scored_on_its_pool_equals_eval_bag(tmp_path, untrained_checkpoint):
    """One person, one clip per emotion and session: the bags exist, the held-out session is
    kept apart, and the pooled score of the eval session is eval-bag's offline score."""
    size = world.WorldSize(people=1, pool_clips=1, eval_clips=1)
    draw = world.people_draw(tmp_path, size, 'studio', None, number=0)
    assert len(draw.pool_bags) == len(draw.eval_bags) == 1
    again = world.people_draw(tmp_path, size, 'studio', None, number=0)
    assert again == draw                                  # kept, not redrawn
    settings = StreamSettings(min_segments=3)
    pool = world.pooled(tmp_path, draw, untrained_checkpoint, settings)
    got = world.score_on_pool(pool, untrained_checkpoint, draw.eval_recordings)
    bag = draw.eval_bags[0]
    want = evaluate_bag(EvalConfig(bag, bags.default_labels_path(bag), untrained_checkpoint,
                                   settings=settings))
    assert got['windows_scored'] == want['windows_scored'] > 0
    assert got['window_accuracy'] == pytest.approx(want['window_accuracy'])
    assert got['clip_accuracy'] == pytest.approx(want['clip_accuracy'])
