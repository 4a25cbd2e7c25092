"""What the project knows of OpenClaw's files and database, over the core; read-only by
design (``docs/openclaw.md``).

Reading order: ``agents`` (state directory, agents and their folders) -> ``files`` (the
JSONL era: transcripts and archives of a sessions directory) -> ``database`` (the SQLite era:
the per-agent database, opened so that not even its side files change) -> ``archives``
(deletion archives and cold storage) -> ``segments`` (cutting a session at its reset
boundaries, and naming the parts).
"""
