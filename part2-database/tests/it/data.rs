//! Denormalization, N+1 and indexes, on the tiny dataset.

use std::sync::Arc;

use part2_database::articles::{self, Shape};
use part2_database::{drill, schema, tuning};

use crate::support::loaded;

#[tokio::test]
async fn the_loader_is_complete_and_consistent() {
    let l = loaded().await;
    let counts = part2_database::mongo::counts_sql(&l.db.pool).await.unwrap();
    let s = l.spec.sizes;
    assert_eq!(counts.users, s.users);
    assert_eq!(counts.articles, s.articles);
    assert_eq!(counts.comments, s.comments);
    assert_eq!(
        counts.friendships,
        2 * l.spec.friendships().count() as u64,
        "both directions"
    );
    assert_eq!(
        articles::counter_mismatches(&l.db.pool).await.unwrap(),
        0,
        "denormalized counts are right from the start"
    );
    assert!(schema::loaded(&l.db.pool, &l.spec).await.unwrap());
    l.db.drop_database().await;
}

#[tokio::test]
async fn join_and_denormalized_reads_agree() {
    let l = loaded().await;
    let author = l.spec.user_popularity().id_of_rank(1);
    for page in 0..2 {
        let joined = articles::by_author(&l.db.pool, Shape::Join, author, page)
            .await
            .unwrap();
        let denorm = articles::by_author(&l.db.pool, Shape::Denormalized, author, page)
            .await
            .unwrap();
        assert!(!joined.is_empty());
        assert_eq!(joined, denorm);
    }
    let hot = l.spec.article_popularity().id_of_rank(1);
    let a = articles::page(&l.db.pool, Shape::Join, hot)
        .await
        .unwrap()
        .unwrap();
    let b = articles::page(&l.db.pool, Shape::Denormalized, hot)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a, b);
    assert!(a.summary.comment_count > 10);
    assert_eq!(
        articles::page(&l.db.pool, Shape::Join, 10_000_000)
            .await
            .unwrap(),
        None
    );
    l.db.drop_database().await;
}

#[tokio::test]
async fn denormalized_counts_equal_the_truth_after_many_concurrent_writes() {
    let l = loaded().await;
    let pool = l.db.pool.clone();
    let hot: Vec<u64> = (1..=3)
        .map(|r| l.spec.article_popularity().id_of_rank(r))
        .collect();
    let hot = Arc::new(hot);
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let (pool, hot) = (pool.clone(), hot.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let article = hot[((w + i) % 3) as usize];
                articles::add_comment(&pool, Shape::Denormalized, article, w + 1, "concurrent", 0)
                    .await
                    .unwrap();
                // Likes collide on purpose: the same user likes twice.
                articles::add_like(&pool, article, 1 + (w * 7 + i) % 40, 0)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(articles::counter_mismatches(&pool).await.unwrap(), 0);
    assert!(matches!(
        articles::add_comment(&pool, Shape::Denormalized, 10_000_000, 1, "x", 0).await,
        Err(sqlx::Error::RowNotFound)
    ));
    l.db.drop_database().await;
}

#[tokio::test]
async fn n_plus_1_sends_a_select_per_article_and_batched_one_as_the_server_counts() {
    let l = loaded().await;
    let ids: Vec<u64> = (1..=20)
        .map(|r| l.spec.article_popularity().id_of_rank(r))
        .collect();
    let page = ids.clone();
    let ((a, _), n_plus_1) = tuning::count_selects(&l.db.pool, |p| async move {
        articles::comments_n_plus_1(&p, &page, 5).await
    })
    .await
    .unwrap();
    let page = ids.clone();
    let ((b, _), batched) = tuning::count_selects(&l.db.pool, |p| async move {
        articles::comments_batched(&p, &page, 5).await
    })
    .await
    .unwrap();
    // Counted by MariaDB (Com_select on the connection that ran them).
    assert_eq!(n_plus_1, ids.len() as u64, "one SELECT per article");
    assert_eq!(batched, 1, "one SELECT for the page");
    assert_eq!(a, b);
    assert!(a.values().all(|c| c.len() <= 5));
    l.db.drop_database().await;
}

#[tokio::test]
async fn explain_shows_the_full_scan_without_the_index_and_the_lookup_with_it() {
    let l = loaded().await;
    let pool = &l.db.pool;
    let id = l.spec.article_popularity().id_of_rank(1);
    let p = pool.clone();
    let without =
        drill::with_index_dropped(pool, "comments", tuning::COMMENTS_INDEX, || async move {
            Ok(tuning::explain_comments(&p, id).await?)
        })
        .await
        .unwrap();
    assert_eq!(without.access, "ALL", "{without}");
    assert!(without.key.is_none());
    let with = tuning::explain_comments(pool, id).await.unwrap();
    assert_eq!(with.key.as_deref(), Some(tuning::COMMENTS_INDEX), "{with}");
    assert!(with.rows < without.rows);
    l.db.drop_database().await;
}
