"""The fast tier: every command's ``main(argv)`` and pure functions, in the pytest process.
``bin/test --fast`` runs it (and the other modules marked ``inprocess``) in seconds."""
