"""The ``stillroom`` command line: server commands and the admin API's client."""
