"""``mqtt-job-worker``: take ONE job pointer from MQTT, run its steps in the workDir on the
shared drive, publish the result, acknowledge the pointer, exit.

Reading order: ``command`` (the console script: one cycle from connect to exit) ->
``settings`` (every setting, described once) -> ``broker`` (the MQTT v5 session, manual
acknowledgement) -> ``job`` (the pointer, the workDir, the steps, the result record).
"""
