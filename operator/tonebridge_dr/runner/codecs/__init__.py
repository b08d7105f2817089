"""Streaming codecs: compression registry, OpenPGP encryption, and the pipeline composing them."""
