"""Users, groups and tokens use Django's and DRF's own admin pages."""
