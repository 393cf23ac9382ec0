"""The change trail has no background work: rows are written in the change's transaction."""
