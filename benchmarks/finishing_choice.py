"""Which members the finishing stage of a finished search would choose on its candidates' figures re-timed side
by side, against the figures stored now (a copy of the store is re-timed; the run is left as it is)::

    python benchmarks/finishing_choice.py runs/autocompress.db RUN [--device laptop-cpu] [--space default]

The stored figures of a finished run are those of its last re-timing (front members) or of its trials (the
others, timed before their training); ``search`` re-times every finished candidate before it chooses
(``search.runner.retime_candidates``) since 2026-12-07.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db")
    ap.add_argument("run")
    ap.add_argument("--device", default="laptop-cpu")
    ap.add_argument("--space", default="default")
    args = ap.parse_args()
    from autocompress.hardware import load_profile
    from autocompress.recipe import Recipe
    from autocompress.search.finishing import members
    from autocompress.search.runner import retime_candidates
    from autocompress.search.space import load_space
    from autocompress.store import Store

    spec = load_space(args.space).finish
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "copy.db"
        shutil.copy(args.db, db)
        store = Store(f"sqlite:///{db}")
        floor = (store.get_run(args.run).settings.get("baseline") or {}).get("main")   # the trivial answer's val

        def show(title: str) -> None:
            done = [t for t in store.trials(args.run) if t.status == "done" and t.role in ("teacher", "candidate")]
            print(f"{title}: the members chosen {[t.number for t in members(done, args.device, spec, floor)]}")
            for t in done:
                print(f"  #{t.number:<3} {t.latencies[args.device]['median_ms']:7.2f} ms  val {100 * t.accuracy('val'):.1f}"
                      f"  {Recipe.from_json(t.recipe).short() if t.recipe else 'teacher'}")

        show("stored figures")
        t0 = time.time()
        n = retime_candidates(store, args.run, load_profile(args.device))
        print(f"re-timed {n} side by side in {time.time() - t0:.0f} s")
        show("re-timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
