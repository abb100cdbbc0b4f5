"""The sharded FAISS index: training, adding parts, merging shards (build), and searching the shards with
their passage lookups (search)."""
