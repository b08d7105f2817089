"""The bucket engine: incremental, deduplicated, content-addressed snapshots of an S3 bucket.

Modules: endpoint (the source or target bucket and its credentials), content (content
objects under `objects/`, their codecs and the content index), keymap (the snapshot's
key -> content map, streamed), snapshot (the backup), restore, verify, gc (mark and
sweep of content no retained snapshot references), commands (CLI glue).
"""
