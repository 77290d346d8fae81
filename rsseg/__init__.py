"""rsseg: remote-sensing semantic segmentation with few labels."""

__version__ = "0.1.0"
