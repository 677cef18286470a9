"""Manifests, synthetic corpus, data loading."""
