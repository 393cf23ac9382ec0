"""Operators: the ``admin`` and ``auditor`` roles, API tokens, and bootstrapping an install.

Roles are Django groups whose permissions are derived from each app's
``sanctum_roles`` declaration (see :mod:`control_plane.accounts.roles`), so a later app
(network, audit) grants its own permissions by declaring them, not by editing a list here.
"""
