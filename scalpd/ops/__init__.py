"""The daemon's contact with its operator and its service manager.

- `alerts`: operator alerts through apprise (Discord, Slack, any URL apprise knows), sent from a
  worker thread so that a slow or dead target never holds up the event loop.
- `systemd`: sd_notify (READY, STOPPING, STATUS, WATCHDOG) and the watchdog task that proves to
  systemd, from the event loop itself, that the loop still turns.
- `metrics`: Prometheus metrics (the text format, no client library) and their loopback HTTP
  endpoint; `grafana/scalpd.json` at the repository root is their dashboard.

The unit files that use them are in `systemd/` at the repository root.
"""
