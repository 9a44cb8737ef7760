"""The ``autocompress`` command: search, front, runs, pick, predict, finetune, profiles, bench.

parser.py (the grammar), checks.py (the user's input, checked before any work), search.py (search and
--resume, on ``search.session``), commands.py (the others). User mistakes end with one line on stderr
and exit code 2, never a traceback.
"""
from __future__ import annotations

import os
import shlex
import sys

from .checks import EXIT_USAGE, UserError
from .parser import build_parser, join_negative_values


def _command(name: str):
    from . import commands, search

    return {"search": search.cmd_search, "front": commands.cmd_front, "runs": commands.cmd_runs,
            "pick": commands.cmd_pick, "predict": commands.cmd_predict, "finetune": commands.cmd_finetune,
            "profiles": commands.cmd_profiles, "bench": commands.cmd_bench}[name]


def main(argv: list[str] | None = None) -> int:
    argv = join_negative_values(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "autocompress " + shlex.join(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()      # no weight-loading reports or progress bars from transformers
    hf_logging.disable_progress_bar()
    try:    # importing the methods loads the plugins AUTOCOMPRESS_PLUGINS names: a broken one is said in one line
        from ..methods.base import RecipeError
    except Exception as e:
        if type(e).__name__ != "RecipeError":
            raise
        print(f"autocompress {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from ..hardware import ProfileError
    from ..search.cluster import ClusterError
    from ..search.settings import SessionError
    from ..search.space import SpaceError
    from ..ship import IntegrityError, PickError
    from ..store import StoreError
    from ..tasks import DataError
    from ..teacher import TeacherError

    try:
        return _command(args.command)(args)
    except (UserError, DataError, ProfileError, SpaceError, StoreError, TeacherError, RecipeError, ClusterError,
            PickError, SessionError) as e:
        print(f"autocompress {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except IntegrityError as e:          # not a usage mistake: the store and the files disagree
        print(f"autocompress {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autocompress: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:              # the reader went away (`autocompress front RUN | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # (the interpreter's exit flushes stdout)
        return 0
