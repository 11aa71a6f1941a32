"""Models by name: the ones octrain ships or fetches, GGUF files, and the tiny offline model."""
