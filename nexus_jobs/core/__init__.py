"""The core every command stands on; it imports nothing else of the project.

Reading order: ``exits`` (the exit-code table) -> ``errors`` (exceptions carrying an exit
code) -> ``secrets`` (what must never be shown, and the environment of children) -> ``config``
(option descriptions, the config file, ``.env``, the state directory) -> ``state`` (locks and
atomic JSON files) -> ``http`` (one session with retries) -> ``processes`` (the one runner of
child processes) -> ``stopping`` (SIGTERM/SIGINT as flags).
"""
