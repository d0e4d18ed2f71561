"""Streaming benchmark: the gateway vs nginx vs going direct (`python -m bench`)."""
