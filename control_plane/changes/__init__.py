"""The admin change trail: who changed which object, when, and its metadata before/after.

Every change-logged model (:class:`~control_plane.changes.models.ChangeLoggedModel`)
writes an :class:`~control_plane.changes.models.ObjectChange` in the same transaction as
the change. Only the fields a model names in ``change_logged_fields`` are recorded, so
a key, a hash or a secret can't slip in by being added to a model later.
"""
