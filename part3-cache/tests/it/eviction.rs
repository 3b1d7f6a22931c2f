//! A cache smaller than the data (experiment 7): a tiny private memcached
//! really evicts, and the best possible hit ratio is the top-k sum.

use std::sync::Arc;

use part3_cache::backend::CacheBackend;
use part3_cache::demo::backends::{PrivateMemcached, PrivateRedis};
use part3_cache::demo::eviction::{
    best_possible, fill, read_sequence, read_through, zipf_probabilities,
};

#[test]
fn the_best_possible_ratio_is_the_sum_of_the_top_k_probabilities() {
    // Weights 1, 1/2, 1/3, 1/4, 1/5 sum to 137/60. A cache of three holds
    // ranks 1 to 3: (1 + 1/2 + 1/3) / (137/60) = (110/60) / (137/60) = 110/137.
    let p = zipf_probabilities(5, 1.0);
    assert!((best_possible(&p, 3) - 110.0 / 137.0).abs() < 1e-12);
    assert!((best_possible(&p, 1) - 60.0 / 137.0).abs() < 1e-12);
    assert!((best_possible(&p, 5) - 1.0).abs() < 1e-12);
    // Exponent 0 is uniform: k of n hit k/n.
    assert!((best_possible(&zipf_probabilities(10, 0.0), 4) - 0.4).abs() < 1e-12);
}

#[tokio::test]
async fn a_tiny_memcached_evicts_and_misses() {
    // 1 MiB holds 451 objects of 2,000 bytes; 2,000 of them do not fit.
    let mc = PrivateMemcached::start(1).await.unwrap();
    let cache: Arc<dyn CacheBackend> = Arc::new(mc.client("").await.unwrap());
    let value = Arc::new(vec![b'o'; 2000]);
    let objects = 2000;
    fill(cache.clone(), objects, value.clone()).await;
    let held = mc.stat("curr_items").await.unwrap();
    assert!(held > 0 && held < objects, "held {held}");
    assert!(mc.stat("evictions").await.unwrap() > 0);
    let sequence = Arc::new(read_sequence(objects, 3000, 1));
    let (g0, h0) = (
        mc.stat("cmd_get").await.unwrap(),
        mc.stat("get_hits").await.unwrap(),
    );
    read_through(cache, sequence, 0..3000, value, None).await;
    let (gets, hits) = (
        mc.stat("cmd_get").await.unwrap() - g0,
        mc.stat("get_hits").await.unwrap() - h0,
    );
    assert_eq!(gets, 3000);
    assert!(hits > 0 && hits < gets, "hits {hits} of {gets}");
}

#[tokio::test]
async fn a_redis_with_maxmemory_evicts_and_misses() {
    let rd = PrivateRedis::start(false).await.unwrap();
    let cache: Arc<dyn CacheBackend> = Arc::new(rd.client("").await.unwrap());
    let base = rd.info_u64("memory", "used_memory").await.unwrap();
    rd.admin(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .await
        .unwrap();
    rd.admin(&["CONFIG", "SET", "maxmemory", &(base + 500_000).to_string()])
        .await
        .unwrap();
    let value = Arc::new(vec![b'o'; 2000]);
    fill(cache.clone(), 2000, value.clone()).await;
    let held = rd.dbsize().await.unwrap();
    assert!(held > 0 && held < 2000, "held {held}");
    assert!(rd.info_u64("stats", "evicted_keys").await.unwrap() > 0);
    let sequence = Arc::new(read_sequence(2000, 2000, 2));
    let (h0, m0) = (
        rd.info_u64("stats", "keyspace_hits").await.unwrap(),
        rd.info_u64("stats", "keyspace_misses").await.unwrap(),
    );
    read_through(cache, sequence, 0..2000, value, None).await;
    let hits = rd.info_u64("stats", "keyspace_hits").await.unwrap() - h0;
    let misses = rd.info_u64("stats", "keyspace_misses").await.unwrap() - m0;
    assert_eq!(hits + misses, 2000);
    assert!(hits > 0 && misses > 0, "hits {hits}, misses {misses}");
}
