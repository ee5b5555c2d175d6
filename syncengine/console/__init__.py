"""The web console: server-rendered pages over ``syncengine.api`` for the people who run the
sync (``syncengine console``, or beside ``/healthz`` in ``syncengine daemon --http``).

- ``app.create_app``: the Starlette application (the daemon mounts it);
- ``auth``: users, password hashes and the sign-in rate limit;
- ``security``: sessions, CSRF tokens and the security headers;
- ``views``: what the pages show, as plain values built from the API.
"""
