"""``nexus-webhook-pull``: fetch pending webhook items from Nexus, deliver them to the agents,
acknowledge what was delivered.

Reading order: ``command`` (the console script and the per-agent loop: fetch, deliver,
record, acknowledge) -> ``delivery`` (inbox file, Gateway hook, command) -> ``ledger``
(delivered ids, attempts, dead letters). Below:
``nexus.webhooks`` and ``openclaw.agents``.
"""
