//! Way 1, do it in advance: the baker (being built).
