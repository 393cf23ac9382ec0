"""Operators are Django users; roles are groups (see ``roles``). No models of our own yet."""
