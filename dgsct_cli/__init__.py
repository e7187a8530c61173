"""dgsct: DG-SCT (Dual-Guided Spatial-Channel-Temporal attention) for audio-visual downstream tasks."""

__version__ = "0.1.0"
