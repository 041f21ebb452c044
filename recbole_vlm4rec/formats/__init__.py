"""The shared formats layer: the files the pipeline's stages hand each other, and small helpers.

Every stage (data -> grounding -> encoding -> models -> run -> benchmark / serving) may import this
package; it imports no stage. One reader and one writer per format:

``paths``         where the shipped protocol (package data) and the user's datasets live
``files``         atomic writes, SQLite caches in WAL mode
``items``         item tables (``.item`` atomic files, CSV, TSV) and text templates over them
``descriptions``  ``descriptions/<tag>.jsonl``, what grounding says about each item image
``features``      item feature files (``.npy`` + ``.tokens`` + ``.json``) and their alignment
``images``        the one image loader (validation, RGB conversion, downscaling, reasons)
``vectors``       row normalisation, the default torch device
``cnn``           the offline ImageNet CNN shared by the tagger and image encoding
"""
