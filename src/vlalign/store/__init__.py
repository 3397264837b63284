"""The feature store: pre-encode once, then stream features from disk."""

from vlalign.store.encode import EncodeOptions, encode_store
from vlalign.store.reader import FeatureStore

__all__ = ["EncodeOptions", "FeatureStore", "encode_store"]
