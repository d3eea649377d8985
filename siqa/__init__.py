"""Blind stereoscopic image quality assessment: the multi-task CNN of Bourbia et al. (ICIP 2021)."""

# The package version, read by pyproject.toml (the one place to change it).
__version__ = "0.1.0"
