"""Curation, training, evaluation and publishing of student versions. Imports core."""
