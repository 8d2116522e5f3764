"""A whole cluster on one machine, for `palomar demo`, the integration tests and the benchmarks:
real Dovecot CE backends, palomar backends and proxies, and HAProxy, all on loopback addresses,
every process stopped by pid."""
