"""ssodkit — semi-supervised object detection with any detector.

The public surface is the CLI (`ssodkit --help`) and the modules named in docs/design.md.
"""

__version__ = "0.1.0"
