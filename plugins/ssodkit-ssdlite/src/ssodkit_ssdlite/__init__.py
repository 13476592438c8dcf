"""ssodkit-ssdlite: torchvision's SSDlite320-MobileNetV3 as an ssodkit detector.

Importing the package stays light (no torch): ssodkit imports the entry-point module
(`ssodkit_ssdlite.plugin`) on every command, `--help` included.
"""

__version__ = "0.1.0"
