"""The frame of every console script, over the core.

Reading order: ``frame`` (flags, logging, the ``main()`` wrapper that turns exceptions into
one line and an exit code, scheduled runs: due check, lock, run record, ``--json`` summary,
progress bar) -> ``monitoring`` (the ``pingUrl`` dead-man's switch).
"""
