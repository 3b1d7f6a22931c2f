//! Precomputed activity streams: fan-out on write (being built).
