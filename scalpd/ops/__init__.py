"""The daemon's contact with its operator and its service manager.

- `alerts`: operator alerts through apprise (Discord, Slack, any URL apprise knows), sent from a
  worker thread so that a slow or dead target never holds up the event loop.
- `systemd`: sd_notify (READY, STOPPING, STATUS, WATCHDOG) and the watchdog task that proves to
  systemd, from the event loop itself, that the loop still turns.

The unit files that use them are in `systemd/` at the repository root.
"""
