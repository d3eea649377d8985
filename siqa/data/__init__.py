"""Stereo IQA databases: loaders, validation, content-disjoint splits, patches, NSS targets.

Heavy modules (torch in `patches`, the demo builder) are imported where they are used.
"""
from siqa.data.databases import DATABASES, load_database, load_database_from_config
from siqa.data.records import StereoPair
from siqa.data.splits import content_splits
from siqa.data.validate import validate_pairs

__all__ = [
    "DATABASES",
    "StereoPair",
    "content_splits",
    "load_database",
    "load_database_from_config",
    "validate_pairs",
]
