"""Contract tests: real HTTP against the local server (and its parts), no kernel."""
