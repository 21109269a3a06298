"""Records and batches: the TFDS record format of ViMed-PET and the Grain pipeline that feeds the models.

Build side (used by tfds_builder/vimed_pet): records (HU/SUV encoding, features), plan (studies per split),
examples (Study -> records), generate (plain and Beam paths, quarantine), build (build_dataset, CLI).
Read side: volume (resize, windows), inputs (record -> model example), batching (bucketed batches, global
arrays), pipeline (the Grain loader). Nothing here is imported eagerly: a reader never pays for Beam or TFDS
writing code, and a builder never imports JAX.
"""
