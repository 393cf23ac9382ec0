"""Clients and their API keys. A key is shown once when issued and stored only as a hash."""
