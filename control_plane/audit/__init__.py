"""Receipts and the ledger: usage records collected from the nodes, verified, logged in an
append-only Merkle log with signed tree heads, and served to auditors.

- ``ledger``: the log's storage (receipts as leaves, complete subtree hashes, tree
  heads), appends under one lock, proofs as indexed lookups.
- ``services``: collection from a node (fetch, verify, store, log, sign, then
  acknowledge), audit bundles and consistency files for auditors.
- ``tasks``: the Celery beat task per node; ``reconcile`` runs the same without a broker.
- ``api`` and ``views``: read-only, for the ``auditor`` and ``admin`` roles.
"""
