"""Serving stage: export VLM4Rec as a bundle (embeddings + FAISS index) and answer top-k online."""
