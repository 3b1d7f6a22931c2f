//! Part 4's demo (being built).
