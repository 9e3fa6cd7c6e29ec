"""ssast: self-supervised pretraining and fine-tuning of Audio Spectrogram Transformers."""

__version__ = "0.1.0"
