//! Authoritative DNS for the fabric zone (in progress).
