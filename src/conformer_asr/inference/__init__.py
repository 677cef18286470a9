"""Model folders and the transcriber."""
