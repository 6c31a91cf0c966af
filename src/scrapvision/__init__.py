"""scrapvision: computer-vision scrap sorting, from labelled photos to ejector decisions."""

__version__ = "0.1.0"
