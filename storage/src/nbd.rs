//! The NBD protocol: see the submodules.
