"""Models: tokenizer, ViT encoder, masking, pretraining objectives and model, fine-tuning classifier, weight import."""
# --- model core (tokenizer, encoder, masking, objectives, pretraining model) ---
from ssast.models.encoder import MODEL_SIZES, ViTEncoder, build_encoder
from ssast.models.masking import cluster_mask, inverse_block_mask, num_masked, random_mask, sample_mask
from ssast.models.objectives import info_nce, masked_mse
from ssast.models.pretrain import PretrainOutput, SSASTPretrainModel, build_pretrain_model
from ssast.models.tokenizer import InputShapeError, PatchEmbed, grid_shape, patchify, unpatchify
# --- fine-tuning classifier, positional-embedding adaptation, checkpoints, DeiT init, authors' import ---
from ssast.models.posembed import WeightMismatchError, adapt_pos_embed, adapt_prefix
from ssast.models.classifier import SSASTClassifier, load_encoder_into, load_state_strict
from ssast.models.imagenet import DEIT_NAMES, deit_to_encoder_state
from ssast.models.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_state,
    read_checkpoint_meta,
    save_checkpoint,
)
from ssast.models.authors import convert_authors_checkpoint
from ssast.models.factory import build_classifier, build_model, import_authors_checkpoint, load_pretrained
