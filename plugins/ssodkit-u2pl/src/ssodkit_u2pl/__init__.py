"""ssodkit-u2pl: U2PL's unreliable pseudo-labels (Wang et al., CVPR 2022) on dense detectors.

Importing the package stays light (no torch): ssodkit imports the entry-point module
(`ssodkit_u2pl.plugin`) on every command, `--help` included.
"""

__version__ = "0.1.0"
