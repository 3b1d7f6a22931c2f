//! User files: stored centrally, checked before they are stored.

use crate::support::spawn_app;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot really a picture";

#[tokio::test]
async fn uploads_are_limited_and_checked_and_the_old_picture_survives() {
    let app = spawn_app("redis", |c| c.max_avatar_bytes = 1024).await;
    let (u, name) = app.logged_in().await;
    assert_eq!(u.put_avatar("image/png", PNG.to_vec()).await.unwrap(), 204);

    let mut too_big = PNG.to_vec();
    too_big.resize(2048, 0);
    assert_eq!(u.put_avatar("image/png", too_big).await.unwrap(), 413);
    assert_eq!(
        u.put_avatar("text/html", b"<script>".to_vec())
            .await
            .unwrap(),
        415
    );
    assert_eq!(
        u.put_avatar("image/jpeg", PNG.to_vec()).await.unwrap(),
        400,
        "bytes must match the type"
    );
    assert_eq!(u.put_avatar("image/png", Vec::new()).await.unwrap(), 400);

    let (status, kind, bytes) = u.avatar(&name).await.unwrap();
    assert_eq!(
        (status.as_u16(), kind.as_str(), bytes.as_slice()),
        (200, "image/png", PNG),
        "the first upload is intact"
    );

    assert_eq!(u.avatar("nobody_has_this").await.unwrap().0, 404);
    assert_eq!(u.avatar("..%2F..%2Fetc").await.unwrap().0, 400);
    let anonymous = app.user();
    assert_eq!(
        anonymous
            .put_avatar("image/png", PNG.to_vec())
            .await
            .unwrap(),
        401
    );
    app.stop().await;
}
