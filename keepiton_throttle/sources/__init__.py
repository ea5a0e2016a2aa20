"""Where packets come from: capture files (here) and live capture (``live.py``, later)."""

from .capture import CaptureInfo, CaptureReader, Chunk, ReadStats, read_capture

__all__ = ["CaptureInfo", "CaptureReader", "Chunk", "ReadStats", "read_capture"]
