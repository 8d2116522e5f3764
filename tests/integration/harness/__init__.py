"""Real servers for integration tests: Dovecot CE instances, HAProxy, an SMTP sink, certificates.

Everything listens on loopback only and every process started here is stopped by pid.
"""
