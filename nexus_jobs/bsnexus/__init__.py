"""``bsnexus-worker``: register once with the BSNexus backend, then consume task assignments
from Redis Streams, execute them, publish the results and send heartbeats.

One run reads top to bottom: ``command`` (the console script and its subcommands) ->
``registration`` (the backend's HTTP API and the saved identity in ``.env``) and ``worker``
(the loop) -> ``streams`` (Redis), ``tasks`` (messages in, results out), ``executors`` and
``gitops``.
"""
