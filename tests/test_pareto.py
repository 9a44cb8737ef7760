"""Pareto fronts, the latency budget, and the hypervolume on hand-made trials."""
import pytest

from autocompress.search.pareto import best_within, dominates, front, hypervolume
from autocompress.store import TrialRecord


def trial(number, acc, lat=None, profile="laptop", split="val", **other_latencies):
    t = TrialRecord(number, "candidate", "{}", f"h{number}", "done", None, 1.0, 1.0, 100, {})
    if acc is not None:
        t.metrics[split] = {"n": 100, "main": acc}
    if lat is not None:
        t.latencies[profile] = {"profile": profile, "median_ms": lat}
    for p, ms in other_latencies.items():
        t.latencies[p] = {"profile": p, "median_ms": ms}
    return t


@pytest.fixture
def trials():
    return [
        trial(0, 0.92, 50.0),            # teacher: most accurate, slowest -> on the front
        trial(1, 0.90, 20.0),            # front
        trial(2, 0.85, 10.0),            # front
        trial(3, 0.84, 25.0),            # dominated by 1 (less accurate and slower)
        trial(4, 0.90, 20.0),            # equal duplicate of 1 -> only 1 is kept
        trial(5, 0.99, None, phone=3.0),  # no latency for laptop: ignored there
        trial(6, None, 5.0),             # no val accuracy: ignored
        trial(7, 0.85, 12.0),            # same accuracy as 2 but slower: dominated
        trial(8, 0.80, 8.0),             # fastest: front
        trial(9, 0.90, 30.0),            # same accuracy as 1 but slower: dominated
    ]


def test_dominates():
    assert dominates((0.9, 10), (0.8, 20))
    assert dominates((0.9, 10), (0.9, 20))
    assert dominates((0.9, 10), (0.8, 10))
    assert not dominates((0.9, 10), (0.9, 10))          # equal points do not dominate each other
    assert not dominates((0.9, 20), (0.8, 10))          # a trade-off
    assert not dominates((0.8, 20), (0.9, 10))


def test_front_keeps_exactly_the_non_dominated(trials):
    f = front(trials, "laptop")
    assert [t.number for t in f] == [8, 2, 1, 0]         # fastest first
    lats = [t.latencies["laptop"]["median_ms"] for t in f]
    accs = [t.accuracy("val") for t in f]
    assert lats == sorted(lats) and accs == sorted(accs)  # along a front, slower means more accurate
    for t in f:                                           # brute-force check
        p = (t.accuracy("val"), t.latencies["laptop"]["median_ms"])
        assert not any(dominates((o.accuracy("val"), o.latencies["laptop"]["median_ms"]), p)
                       for o in trials if o.accuracy("val") is not None and "laptop" in o.latencies)


def test_front_duplicates_keep_lowest_number(trials):
    reordered = [trials[4]] + [t for t in trials if t.number != 4]
    assert [t.number for t in front(reordered, "laptop")] == [8, 2, 1, 0]


def test_front_per_profile_and_split(trials):
    assert [t.number for t in front(trials, "phone")] == [5]
    assert front(trials, "nosuch") == []
    assert front([], "laptop") == []
    dev = [trial(1, 0.7, 10.0, split="dev"), trial(2, 0.8, 5.0, split="dev"), trial(3, 0.9, 1.0)]
    assert [t.number for t in front(dev, "laptop", split="dev")] == [2]
    assert [t.number for t in front(dev, "laptop")] == [3]


def test_best_within(trials):
    assert best_within(trials, "laptop", 20.0).number == 1          # 0.90 at 20 ms (the limit is inclusive)
    assert best_within(trials, "laptop", 19.9).number == 2
    assert best_within(trials, "laptop", 100.0).number == 0
    assert best_within(trials, "laptop", None).number == 0          # no budget: the most accurate
    assert best_within(trials, "laptop", 8.0).number == 8
    assert best_within(trials, "laptop", 7.9) is None                # nothing fits (trial 6 has no accuracy)
    assert best_within(trials, "phone", 2.0) is None
    assert best_within(trials, "phone", 3.0).number == 5
    assert best_within([], "laptop", 10.0) is None


def test_best_within_ties_prefer_faster():
    ts = [trial(1, 0.9, 15.0), trial(2, 0.9, 12.0), trial(3, 0.9, 14.0)]
    assert best_within(ts, "laptop", 20.0).number == 2


def test_hypervolume_by_hand():
    ref = (0.5, 30.0)
    # rectangles from (acc, lat) to ref: [5, 30] x [0.5, 0.8] = 7.5 and [10, 30] x [0.8, 0.9] = 2.0
    pts = [(0.8, 5.0), (0.9, 10.0)]
    assert hypervolume(pts, ref) == pytest.approx(9.5)
    # a dominated point and a duplicate add nothing; order does not matter
    assert hypervolume([(0.9, 10.0), (0.7, 20.0), (0.8, 5.0), (0.8, 5.0)], ref) == pytest.approx(9.5)
    # points beyond the reference add nothing
    assert hypervolume(pts + [(0.4, 1.0), (0.99, 31.0), (0.95, 30.0)], ref) == pytest.approx(9.5)
    assert hypervolume([], ref) == 0.0
    assert hypervolume([(0.6, 29.0)], ref) == pytest.approx(0.1)
    # three steps: [2, 30]x[0.5, 0.6] + [4, 30]x[0.6, 0.7] + [8, 30]x[0.7, 1.0] = 2.8 + 2.6 + 6.6
    assert hypervolume([(1.0, 8.0), (0.6, 2.0), (0.7, 4.0)], ref) == pytest.approx(12.0)


def test_hypervolume_grows_with_a_better_point():
    ref = (0.5, 30.0)
    base = hypervolume([(0.8, 5.0), (0.9, 10.0)], ref)
    assert hypervolume([(0.8, 5.0), (0.9, 10.0), (0.85, 7.0)], ref) > base


def test_zipped_size_is_the_third_objective():
    """A sparse model (same latency, a little less accurate, a much smaller download) is on the front
    once zipped sizes are known; a model bigger, slower and less accurate is not."""
    dense = trial(1, 0.90, 20.0)
    sparse = trial(2, 0.89, 20.0)
    worse = trial(3, 0.88, 21.0)
    dense.size_zip_mb, sparse.size_zip_mb, worse.size_zip_mb = 80.0, 40.0, 45.0
    assert [t.number for t in front([dense, sparse, worse], "laptop")] == [1, 2]
    assert dominates((0.9, 10, 5), (0.9, 10, 6)) and not dominates((0.9, 10, 6), (0.8, 10, 5))
    worse.size_zip_mb = None          # a trial without the figure: the front falls back to two objectives
    assert [t.number for t in front([dense, sparse, worse], "laptop")] == [1]
    assert best_within([dense, sparse], "laptop", 25.0).number == 1      # the budget pick: most accurate


def test_the_pick_is_the_fastest_within_the_tolerance_of_the_most_accurate():
    """The README's main command once ended by recommending the uncompressed teacher: it beat int8 alone
    by 0.1 point on 1,000 val rows, and int8 was twice as fast. Within one point, the faster one is picked;
    with tolerance 0, the most accurate; the budget still applies first."""
    from autocompress.search.pareto import pick_reason

    teacher, int8, small = trial(0, 0.965, 23.0), trial(1, 0.964, 11.0), trial(2, 0.950, 7.0)
    ts = [teacher, int8, small]
    assert best_within(ts, "laptop", None).number == 1                      # default: one point
    assert best_within(ts, "laptop", None, tolerance=0.0).number == 0
    assert best_within(ts, "laptop", None, tolerance=0.02).number == 2      # 1.5 points below: within 2
    assert best_within(ts, "laptop", 10.0).number == 2                      # the budget leaves int8 out
    why = pick_reason(ts, "laptop", None)
    assert why.startswith("* = trial 1: the fastest within 1 point(s)") and "trial 0" in why and "2.09x faster" in why
    assert "the most accurate" in pick_reason(ts, "laptop", None, tolerance=0.0)


def test_latencies_within_five_percent_are_one_speed_for_the_pick():
    """The README run of 2026-12-07 19:26 ended on the 400-step parent (#5: val 87.80, 4.55 ms) of a finished
    member (#16: the same structure, val 88.60, 4.56 ms): 0.01 ms faster, 3.7 dev points worse. Latencies
    within SPEED_TIE of the fastest within the tolerance are one speed: the most accurate of them is the pick.
    A member more than 5% faster still wins."""
    from autocompress.search.pareto import SPEED_TIE, pick_reason

    assert SPEED_TIE == 0.05
    teacher, parent, finished = trial(0, 0.885, 17.27), trial(5, 0.878, 4.55), trial(16, 0.886, 4.56)
    ts = [teacher, parent, finished]
    assert best_within(ts, "laptop", 50.0).number == 16
    why = pick_reason(ts, "laptop", 50.0)
    assert why.startswith("* = trial 16, the most accurate within 50 ms") and "more than 5% faster" in why
    assert "trial 5 is 1.00x faster still" in why
    # 4.30 ms is 5.8% faster than 4.55: a real gain within one point, so it is the pick
    quick = trial(7, 0.880, 4.30)
    assert best_within(ts + [quick], "laptop", 50.0).number == 7
    assert "trial 7: the fastest within 50 ms" in pick_reason(ts + [quick], "laptop", 50.0)
    # the tie is taken around the fastest within the tolerance, not around the most accurate
    near = trial(8, 0.884, 4.40)                          # within 5% of 4.30: the more accurate of the two
    assert best_within(ts + [quick, near], "laptop", 50.0).number == 8
    assert best_within(ts + [quick, near], "laptop", 50.0, tolerance=0.0).number == 16


def test_members_at_or_below_the_trivial_baseline_are_off_the_front():
    """A chance-level model (57.1% where always answering the majority class scores 57.1%) is never a front
    member, however fast; it is listed by ``trivial`` (the store keeps it)."""
    from autocompress.search.pareto import trivial

    ts = [trial(0, 0.90, 20.0), trial(1, 0.571, 2.0), trial(2, 0.60, 5.0), trial(3, 0.55, 1.0)]
    assert [t.number for t in front(ts, "laptop", floor=0.571)] == [2, 0]
    assert [t.number for t in trivial(ts, 0.571)] == [1, 3]
    assert [t.number for t in front(ts, "laptop")] == [3, 1, 2, 0]              # no floor recorded: as before
    assert trivial(ts, None) == []
