"""Naturalness (NSS) targets (docs/method.md#the-nss-targets): DT-CWT + Gaussian copula with Gamma marginals.

Public API: `dtcwt_forward` (numpy, one image), `dtcwt_forward_torch` (batched),
`nss_features` (one pair), `nss_features_batch` (pairs of one size), `nss_features_torch`
(batched tensors), and `siqa.nss.cache.nss_targets` (files, with an on-disk cache).
Imported lazily, so that `python -m siqa.nss --help` does not load torch.
"""
import importlib

_EXPORTS = {
    "dtcwt_forward": "siqa.nss.transform", "dtcwt_forward_torch": "siqa.nss.transform",
    "dtcwt_magnitudes_torch": "siqa.nss.transform",
    "nss_features": "siqa.nss.features", "nss_features_batch": "siqa.nss.features",
    "nss_features_torch": "siqa.nss.features", "MARGINALS": "siqa.nss.features",
    "PREPROCESS": "siqa.nss.features", "PARAMETERS": "siqa.nss.features",
    "N_FEATURES": "siqa.nss.features", "CENSOR_K": "siqa.nss.features",
    "STANDARDISE_DTYPES": "siqa.nss.features", "nss_targets": "siqa.nss.cache",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'siqa.nss' has no attribute {name!r}")
