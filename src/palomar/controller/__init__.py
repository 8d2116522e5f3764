"""The per-site controller: automation features (health first) with states on, dryrun and off."""
