"""The core every command stands on; it imports nothing else of the project.

Reading order: ``exits`` (the exit-code table) -> ``errors`` (exceptions carrying an exit
code) -> ``secrets`` (what must never be shown) -> ``config`` (option descriptions, the config
file, ``.env``, the state directory) -> ``state`` (locks and atomic JSON files) -> ``http``
(one session with retries).
"""
