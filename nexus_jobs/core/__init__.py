"""The core every command stands on; it imports nothing else of the project.

Reading order: ``exits`` (the exit-code table) -> ``errors`` (exceptions carrying an exit
code) -> ``secrets`` (what must never be shown, and the environment of children) ->
``options`` (each setting described once) -> ``config`` (the config file, ``.env``, job
entries) -> ``statedir`` (where the state lives) -> ``state`` (locks and atomic JSON files)
-> ``http`` (one session with retries) -> ``processes`` (the one runner of child processes)
-> ``stopping`` (SIGTERM/SIGINT: flags for workers, an interruption for one-shot jobs).
"""
