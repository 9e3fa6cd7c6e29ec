"""Data sources (JSON clip lists, audio folders, WebDataset shards), datasets, samplers and the batch loader."""
from ssast.data.dataset import ClipDataset, bad_item, collate, reason_kind
from ssast.data.loader import ClipLoader, WeightedInterleave, build_loader, compute_dataset_stats, source_kind
from ssast.data.manifest import (
    Clip,
    DataError,
    LabelSet,
    check_files,
    list_audio_folder,
    read_json_list,
    read_label_csv,
    report_missing,
)
from ssast.data.sampler import ResumableSampler, class_balanced_weights

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
    "check_files",
    "class_balanced_weights",
    "collate",
    "compute_dataset_stats",
    "list_audio_folder",
    "read_json_list",
    "read_label_csv",
    "reason_kind",
    "report_missing",
    "source_kind",
]
