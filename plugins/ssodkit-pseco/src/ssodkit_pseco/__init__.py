"""ssodkit-pseco: PseCo (Li et al., ECCV 2022) as an ssodkit method, `--method pseco`.

Importing the package stays light (no torch): ssodkit imports the entry-point module
(`ssodkit_pseco.plugin`) on every command, `--help` included.
"""

__version__ = "0.1.0"
