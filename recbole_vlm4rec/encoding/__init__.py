"""Encoding stage: item texts (descriptions, metadata) -> dense vectors in feature files."""
