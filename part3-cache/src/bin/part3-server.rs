//! One clone of part 3's server: part 2's server plus the cache.
//! `part3-server --help` lists the flags; defaults fit `./lab up part3`
//! (the object cache on Memcached, stampede protection by lease).
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part3_cache::server::main()
}
