"""Sub-command implementations: each module exposes `run(args, cfg) -> int`."""
