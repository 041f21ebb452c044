"""Datasets: the multimodal RecBole dataset, feature files, and the dataset registry."""
