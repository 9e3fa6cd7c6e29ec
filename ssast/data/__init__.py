"""Data sources (JSON clip lists, audio folders, WebDataset shards), datasets, samplers and the batch loader.

The names most callers need, re-exported; each module imports from the module that defines a name, never from here.
"""
from ssast.data.dataset import ClipDataset, bad_item, collate, reason_kind
from ssast.data.loader import ClipLoader, build_loader, compute_dataset_stats, source_kind
from ssast.data.manifest import Clip, DataError, LabelSet, list_audio_folder, read_json_list, read_label_csv
from ssast.data.sampler import ResumableSampler, class_balanced_weights
from ssast.data.streams import WeightedInterleave

__all__ = [
    "Clip",
    "ClipDataset",
    "ClipLoader",
    "DataError",
    "LabelSet",
    "ResumableSampler",
    "WeightedInterleave",
    "bad_item",
    "build_loader",
    "class_balanced_weights",
    "collate",
    "compute_dataset_stats",
    "list_audio_folder",
    "read_json_list",
    "read_label_csv",
    "reason_kind",
    "source_kind",
]
