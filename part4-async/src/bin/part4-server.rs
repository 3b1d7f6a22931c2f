//! One clone of part 4's server: part 3's server plus jobs
//! (`POST /jobs`, `GET /jobs/{id}`, its result and its events).
//! `part4-server --help` lists the flags; the jobs are done by
//! `part4-worker` processes (or, with `--jobs sync`, the anti-pattern,
//! inside the request). See `part4_async::server`.
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part4_async::server::main()
}
