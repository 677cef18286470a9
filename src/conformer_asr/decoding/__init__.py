"""Greedy and beam-search decoding."""
