"""Process composition: the proxy app with its router, admin API and distiller, the
distiller process, and the servers each command runs."""
