"""Interop with the transformers Data2Vec classes (config, weights, preprocessors)."""
from data2vec.hf.io import load_pretrained, save_pretrained

__all__ = ['load_pretrained', 'save_pretrained']
