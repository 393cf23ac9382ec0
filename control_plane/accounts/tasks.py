"""No background work for operators."""
