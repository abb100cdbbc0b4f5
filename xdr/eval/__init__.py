"""Evaluation: data set loaders, the published metrics, significance, and experiment drivers."""
