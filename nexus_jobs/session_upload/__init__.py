"""``nexus-session-upload``: upload every completed OpenClaw session transcript to Nexus once.

Reading order: ``command`` (the console script: settings, then ``upload_all``: scan ->
upload or list -> summary) -> ``transcripts`` (an agent's completed transcripts in either
storage era, and reading one as the server would check it) -> ``markers`` (what was sent,
so an unchanged transcript is never read again). Below: ``nexus.sessions`` and ``openclaw``.
"""
