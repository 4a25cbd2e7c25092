"""``nexus-jobs``: the operator's view of every scheduled job: ``status``, ``run-due`` and
``check-config``.

Reading order: ``command`` (the console script, ``status`` and ``run-due``) -> ``checks``
(``check-config``: one read-only line per check). This is the top layer: it reads the
jobs' option descriptions, and runs the jobs only as their own console scripts.
"""
