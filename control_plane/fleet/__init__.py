"""The fleet: data-plane nodes, the signed config releases made for them, and rollout.

Rollout turns the database into one signed bundle per node (a ``ConfigRelease`` with a
version above any the node has held) and a Celery task pushes it to the node's
management listener. Beat polls each node's health and re-pushes to any that is behind.
The mechanism is ``control_plane.core.rollout``, shared with gateways; ``rollout`` here
plugs in what is a node's (``NODES``: its models and how its bundle is built).
"""
