"""What belongs to the whole control plane, not to one domain app.

- ``signing``: the control plane's Ed25519 signing key and the signed management
  request (:func:`~control_plane.core.signing.management_auth`).
- ``errors`` and ``api``: the project-wide service errors, and the REST API's base
  pieces (permissions, pagination, the exception handler that maps errors to statuses).
- ``rollout``, ``models``, ``tasks``: the one rollout mechanism. A signed document per
  target, pushed, checked and caught up; nodes (``fleet``) and gateways (``network``)
  plug in only what differs (:class:`~control_plane.core.rollout.RolloutKind`).
- ``management/commands``: the process commands (``serve``, ``worker``, ``beat``,
  ``reconcile``) and ``keys``.

Domain apps import from here; this app imports no domain app (import-linter checks it).
"""
