"""``nexus-session-upload``: upload every complete OpenClaw transcript to Nexus once.

Reading order: ``command`` (the console script: options and settings) -> ``work``
(``upload_all``, one run: scan -> upload or list -> summary) -> ``transcripts`` (an agent's
complete transcripts in either storage era, and reading one as the server would check it) ->
``sqlite_era`` (segments of the SQLite era and what of them was sent) -> ``markers`` (what
was sent, per destination) -> ``archived`` (uploaded archives, by name, per month) ->
``quiet`` (an unchanged database is not scanned again) -> ``upload`` (sending, one marker per
answer) -> ``settings``. Below: ``nexus.sessions`` and ``openclaw``. The contracts are
``docs/openclaw.md`` and ``docs/nexus.md``.
"""
