"""Contracts between Sanctum's planes: config bundles, usage records, receipts, keys,
signatures, Merkle proofs, and the ``sanctum`` command line.

Nothing here imports Django, FastAPI or llama.cpp (import-linter enforces it), so an
auditor can install this package alone and verify a receipt bundle offline.
"""
