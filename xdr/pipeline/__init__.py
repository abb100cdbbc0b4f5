"""The indexing run's model stages (generate queries, encode and fuse) as part-at-a-time callables, and
the xQG fusion rule."""
