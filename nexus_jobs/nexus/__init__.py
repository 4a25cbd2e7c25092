"""What the project knows of the Nexus backend, over the core (``docs/nexus.md``).

Reading order: ``settings`` (the ``nexus`` options, authentication, server messages, the
embedded store's place) -> ``sessions`` (``POST /sessions`` and the embedded session store)
-> ``webhooks`` (pending items and their acknowledgement, and the embedded webhook store).
"""
