//! Owned by a helper; filled in soon.
