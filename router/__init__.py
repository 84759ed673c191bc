"""Routing policy per task: modes, cutover, gates, shadow scoring and drift. Imports core."""
