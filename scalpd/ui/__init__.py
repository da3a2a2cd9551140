"""The terminal UI (`scalpd tui`): a Textual application that watches a running daemon through
its control socket and its SQLite store (read-only) and steers it with the control commands.

It owns only presentation: `data.py` (snapshots from the socket and the store, pure helpers),
`widgets.py` (one small widget per panel), `app.py` (screens, keys, the refresh worker). It
never writes the store and never changes what the daemon does except through the same control
commands `scalpd ctl` sends.
"""
