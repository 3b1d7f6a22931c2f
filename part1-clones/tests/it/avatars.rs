//! User files: stored centrally, checked before they are stored.

use part1_clones::avatar::sample_png;

use crate::support::spawn_app;

#[tokio::test]
async fn uploads_are_limited_and_checked_and_the_old_picture_survives() {
    let app = spawn_app("redis", |c| c.max_avatar_bytes = 1024).await;
    let (u, name) = app.logged_in().await;
    let png = sample_png(48, 48);
    assert_eq!(u.put_avatar("image/png", png.clone()).await.unwrap(), 204);

    let mut too_big = png.clone();
    too_big.resize(2048, 0);
    assert_eq!(u.put_avatar("image/png", too_big).await.unwrap(), 413);
    assert_eq!(
        u.put_avatar("text/html", b"<script>".to_vec())
            .await
            .unwrap(),
        415
    );
    assert_eq!(
        u.put_avatar("image/jpeg", png.clone()).await.unwrap(),
        400,
        "bytes must match the type"
    );
    assert_eq!(u.put_avatar("image/png", Vec::new()).await.unwrap(), 400);

    let (status, kind, bytes) = u.avatar(&name).await.unwrap();
    assert_eq!(
        (status.as_u16(), kind.as_str(), bytes.as_slice()),
        (200, "image/png", png.as_slice()),
        "the first upload is intact"
    );

    assert_eq!(u.avatar("nobody_has_this").await.unwrap().0, 404);
    assert_eq!(u.avatar("..%2F..%2Fetc").await.unwrap().0, 400);
    let anonymous = app.user();
    assert_eq!(
        anonymous
            .put_avatar("image/png", png.clone())
            .await
            .unwrap(),
        401
    );
    app.stop().await;
}

#[tokio::test]
async fn a_page_posing_as_a_gif_is_refused_and_nothing_is_sniffed() {
    let app = spawn_app("redis", |_| {}).await;
    let (u, name) = app.logged_in().await;
    let html = b"GIF89a<html><script>alert(document.cookie)</script></html>".to_vec();
    let res = u
        .raw(reqwest::Method::PUT, "/me/avatar")
        .header("content-type", "image/gif")
        .body(html)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "the header is decoded, not sniffed");
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("image/gif"),
        "{body}"
    );
    assert_eq!(u.avatar(&name).await.unwrap().0, 404, "nothing stored");

    let png = sample_png(8, 8);
    assert_eq!(u.put_avatar("image/png", png).await.unwrap(), 204);
    for path in [
        format!("/users/{name}/avatar"),
        "/health".into(),
        "/me".into(),
    ] {
        let res = u.raw(reqwest::Method::GET, &path).send().await.unwrap();
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let too_big = u
        .raw(reqwest::Method::PUT, "/me/avatar")
        .header("content-type", "image/png")
        .body(vec![0u8; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let body: serde_json::Value = too_big.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("at most"),
        "{body}"
    );
    app.stop().await;
}
