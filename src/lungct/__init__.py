"""lungct: leakage-aware lung CT slice classification (normal / benign / malignant)."""

__version__ = "0.1.0"

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")
"""Class names in label order: label ``i`` is ``CLASSES[i]``."""
