"""The HEAR API under the name the HEAR tools import (``hear-validator ssast.hear``); it lives in
:mod:`ssast.evaluate.hear`."""
from ssast.evaluate.hear import MAX_HOP_MS, HearModel, get_scene_embeddings, get_timestamp_embeddings, load_model

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings", "MAX_HOP_MS"]
