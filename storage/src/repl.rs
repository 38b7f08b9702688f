//! Cross-site replication: see the submodules.
