"""Task heads mirroring the transformers Data2Vec classes: text.py, audio.py, vision.py (and
segmentation.py, its semantic segmentation head). Each module lists its classes in `HEADS`."""
