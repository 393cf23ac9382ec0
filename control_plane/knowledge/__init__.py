"""Knowledge bases: a client's named document collections, loaded onto its nodes.

The control plane keeps the catalog (names, sizes, hashes, chunk counts, which node holds
which document) and never the documents: their bytes pass through the loading request's
memory on their way to the nodes and are gone when it ends.
"""
