//! The work of the worker's and the baker's binaries (`part4-worker`,
//! `part4-bake`): their flags and their `main`, here in the library so
//! each binary is one line that links it ([`common::entry`] says why).

pub mod bake;
pub mod worker;
