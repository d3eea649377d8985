"""Blind stereoscopic image quality assessment: the multi-task CNN of Bourbia et al. (ICIP 2021)."""

# The package version, read by pyproject.toml (the one place to change it).
__version__ = "0.1.0"

__all__ = ["load", "__version__"]


def __getattr__(name):  # siqa.load, imported on first use so that `import siqa.x` stays torch-free
    if name == "load":
        from siqa.inference.api import load

        return load
    raise AttributeError(f"module 'siqa' has no attribute {name!r}")
