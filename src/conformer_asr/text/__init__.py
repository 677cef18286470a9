"""Tokenizer and text normalisation."""
