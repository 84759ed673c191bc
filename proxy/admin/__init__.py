"""The admin API (``/admin/*``) and the task reports it serves."""
