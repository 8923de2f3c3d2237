"""cellfeat: Cell Painting images to CellProfiler-style tables and siRNA predictions."""

__version__ = "0.1.0"
