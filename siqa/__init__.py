"""Blind stereoscopic image quality assessment: the multi-task CNN of Bourbia et al. (ICIP 2021)."""
