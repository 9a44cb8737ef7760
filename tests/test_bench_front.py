"""benchmarks/front.py's table from rows and one pass's latencies (nothing timed or scored): the speed-ups
at <= 1 and <= 3 dev points, the hypervolume, and the searches' efficiency over seeds."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "front.py"


@pytest.fixture(scope="module")
def front():
    spec = importlib.util.spec_from_file_location("bench_front", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _search(part, name, members, trials):
    return {"part": part, "name": name, "trials": trials, "wall_seconds": 1,
            "members": [{"trial": t, "dev": d} for t, d in members]}


def _world():
    rows = [{"part": "teacher", "name": "teacher", "dev": 0.90, "task": "sst2"},
            _search("search", "tpe search, seed 0, v", [(1, 0.895), (2, 0.88)], 12),
            _search("search", "tpe search, seed 1, v", [(1, 0.885)], 12),
            _search("random", "random search, seed 0, 2N", [(1, 0.89)], 24),
            _search("search", "tpe search, seed 0, other", [(1, 0.80)], 12)]       # one seed: no efficiency line
    ms = {("teacher", None): 10.0, ("tpe search, seed 0, v", 1): 4.0, ("tpe search, seed 0, v", 2): 2.0,
          ("tpe search, seed 1, v", 1): 5.0, ("random search, seed 0, 2N", 1): 2.5, ("tpe search, seed 0, other", 1): 1.0}
    return rows, {"laptop-cpu": ms, "mobile-cpu": {k: 5 * v for k, v in ms.items()}}


def test_speedups_and_hypervolume(front):
    rows, lats = _world()
    text = front.render(rows, lats, majority=0.5)
    line = next(x for x in text.splitlines() if x.strip().startswith("tpe search, seed 0, v"))
    # <= 1 point: 0.895 at 4 ms (2.50x); <= 3 points: 0.88 at 2 ms (5.00x)
    assert line.split()[5:7] == ["2.50x", "5.00x"]
    # hypervolume against (0.5, 10 ms) of (0.9, 10), (0.895, 4), (0.88, 2), in points x ms
    hv = (0.88 - 0.5) * (10 - 2) + (0.895 - 0.88) * (10 - 4) + 0                      # the teacher adds no area
    assert float(line.split()[7]) == pytest.approx(hv, abs=1e-3)


def test_efficiency_over_seeds(front):
    rows, lats = _world()
    lines = [x for x in front.render(rows, lats, majority=0.5).splitlines() if "efficiency:" in x]
    assert len(lines) == 2                                # one per device: only 'tpe search, v' has two seeds
    hv0 = (0.88 - 0.5) * 8 + (0.895 - 0.88) * 6
    hv1 = (0.885 - 0.5) * 5
    assert "tpe search, v" in lines[0] and "seeds 0, 1" in lines[0]
    assert f"mean {(hv0 + hv1) / 2:.3f} (min {min(hv0, hv1):.3f}, max {max(hv0, hv1):.3f})" in lines[0]
    assert "other" not in "".join(lines) and "random" not in "".join(lines)
