//! What a committed write changed, queued for the workers (being built).
