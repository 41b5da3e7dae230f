"""The control socket of a mount daemon and `afsfuse-ctl`, its command-line client.

server (serve_control, Handlers, op) and ops (TokenOps, SysnameOps, StatsOps) run inside
the daemon; client and cli run in the user's process.  Nothing is imported here, so the
command-line client does not load the daemon's machinery.
"""
