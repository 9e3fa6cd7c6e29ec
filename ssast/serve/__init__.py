"""Using a trained model: loading it for inference, prediction and embeddings on files and long recordings
(``inference``), and export to other runtimes (``export``: transformers, ONNX). Nothing in ``train`` or below
imports it."""
