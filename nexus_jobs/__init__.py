"""nexus-jobs: cron-driven, stateless worker commands."""

__version__ = "0.1.0"
