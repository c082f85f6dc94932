"""orch: distributed ResNet training for image classification, its packages by concern (ARCHITECTURE.md).
May import: nothing. Beside the packages, leaves every module may import: errors, tags, ray_internals, startup_trace.
"""

__version__ = "0.1.0"
