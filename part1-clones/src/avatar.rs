//! User files: profile pictures in the shared store, never on a clone's disk.
//!
//! A picture uploaded through clone 1 must be served by clone 3, and must
//! survive clone 1 being replaced. So it goes to Redis (`{prefix}:avatar:{username}`,
//! a hash of content type and bytes), like the session.
//!
//! Uploads are checked before anything is stored: a size limit (413), a
//! content type among PNG, JPEG, GIF and WebP (415), and bytes that really
//! start like that format (400), so a file of one kind cannot pose as another.
//!
//! Production would put files in an object store (S3 and the like) behind a
//! CDN; Redis keeps this lab to one more service it already runs.

use crate::error::ApiError;

/// The image types accepted, with the bytes each must start with.
const FORMATS: &[(&str, &[u8])] = &[
    ("image/png", b"\x89PNG\r\n\x1a\n"),
    ("image/jpeg", b"\xff\xd8\xff"),
    ("image/gif", b"GIF8"),
    ("image/webp", b"RIFF"),
];

/// Checks an upload: a known image type whose bytes match it.
pub fn validate(content_type: Option<&str>, bytes: &[u8]) -> Result<&'static str, ApiError> {
    let declared = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let Some((kind, magic)) = FORMATS.iter().find(|(k, _)| *k == declared) else {
        return Err(ApiError::UnsupportedMediaType(
            "an avatar is image/png, image/jpeg, image/gif or image/webp".into(),
        ));
    };
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("the avatar is empty".into()));
    }
    if !bytes.starts_with(magic) || (*kind == "image/webp" && bytes.get(8..12) != Some(b"WEBP")) {
        return Err(ApiError::BadRequest(format!(
            "the body is not a {kind} image"
        )));
    }
    Ok(kind)
}

/// Avatars in Redis.
#[derive(Clone)]
pub struct Avatars {
    redis: redis::aio::ConnectionManager,
    prefix: String,
}

fn unavailable(e: redis::RedisError) -> ApiError {
    ApiError::Unavailable {
        what: "the file store",
        cause: e.to_string(),
    }
}

impl Avatars {
    /// Avatars under the key prefix `prefix`.
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Avatars {
            redis,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, username: &str) -> String {
        format!("{}:avatar:{username}", self.prefix)
    }

    /// Stores a validated avatar, replacing the old one in one command.
    pub async fn put(
        &self,
        username: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<(), ApiError> {
        let mut conn = self.redis.clone();
        let () = redis::pipe()
            .atomic()
            .del(self.key(username))
            .ignore()
            .hset(self.key(username), "type", content_type)
            .ignore()
            .hset(self.key(username), "bytes", bytes)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The avatar's content type and bytes, if there is one.
    pub async fn get(&self, username: &str) -> Result<Option<(String, Vec<u8>)>, ApiError> {
        let mut conn = self.redis.clone();
        let (kind, bytes): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.key(username))
            .arg("type")
            .arg("bytes")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(kind.zip(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_must_be_the_image_they_claim() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        assert_eq!(validate(Some("image/png"), png).unwrap(), "image/png");
        assert_eq!(
            validate(Some("IMAGE/PNG; charset=x"), png).unwrap(),
            "image/png"
        );
        assert_eq!(
            validate(Some("text/html"), png).unwrap_err().status_code(),
            415
        );
        assert_eq!(validate(None, png).unwrap_err().status_code(), 415);
        assert_eq!(
            validate(Some("image/jpeg"), png).unwrap_err().status_code(),
            400
        );
        assert_eq!(
            validate(Some("image/png"), b"").unwrap_err().status_code(),
            400
        );
        assert_eq!(
            validate(Some("image/webp"), b"RIFF\0\0\0\0WEBPVP8 ").unwrap(),
            "image/webp"
        );
        assert_eq!(
            validate(Some("image/webp"), b"RIFF\0\0\0\0WAVE")
                .unwrap_err()
                .status_code(),
            400
        );
    }
}
