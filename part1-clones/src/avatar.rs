//! User files: profile pictures in the shared store, never on a clone's disk.
//!
//! A picture uploaded through clone 1 must be served by clone 3, and must
//! survive clone 1 being replaced. So it goes to Redis (`{prefix}:avatar:{username}`,
//! a hash of content type and bytes), like the session.
//!
//! Uploads are checked before anything is stored: a size limit (413), a
//! content type among PNG, JPEG, GIF and WebP (415), and bytes that really
//! are that format (400), so a file of one kind cannot pose as another.
//!
//! Magic bytes alone are not enough: `GIF89a<html><script>...` starts like
//! a GIF, and a browser that sniffs content may run it as a page. So the
//! header is decoded ([`dimensions`]): PNG's IHDR chunk with its CRC, GIF's
//! logical screen and first block, JPEG's segments up to the frame header,
//! WebP's VP8/VP8L/VP8X chunk; the picture must be 1 to
//! [`MAX_SIDE`] pixels a side. And every response says
//! `X-Content-Type-Options: nosniff` (see [`crate::app`]), so a browser
//! believes the declared type instead of guessing.
//!
//! What is simplified: only the header is decoded, not the pixels.
//! Production re-encodes uploads (decode, resize, encode) so that nothing
//! the client wrote is ever served back byte for byte.
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
    let not_it = || ApiError::BadRequest(format!("the body is not a {kind} image"));
    if !bytes.starts_with(magic) {
        return Err(not_it());
    }
    let (w, h) = dimensions(kind, bytes).ok_or_else(not_it)?;
    if !(1..=MAX_SIDE).contains(&w) || !(1..=MAX_SIDE).contains(&h) {
        return Err(ApiError::BadRequest(format!(
            "an avatar is 1 to {MAX_SIDE} pixels a side, not {w}x{h}"
        )));
    }
    Ok(kind)
}

/// The largest side of an avatar, in pixels.
pub const MAX_SIDE: u32 = 4096;

/// The picture's width and height, read from its header; `None` if the
/// header is not a well-formed one of `kind`.
pub fn dimensions(kind: &str, b: &[u8]) -> Option<(u32, u32)> {
    match kind {
        "image/png" => png(b),
        "image/gif" => gif(b),
        "image/jpeg" => jpeg(b),
        "image/webp" => webp(b),
        _ => None,
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let x = b.get(at..at + 3)?;
    Some(u32::from(x[0]) | u32::from(x[1]) << 8 | u32::from(x[2]) << 16)
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// PNG: the signature, then IHDR first: length 13, width, height, a valid
/// bit depth and colour type, and its CRC.
fn png(b: &[u8]) -> Option<(u32, u32)> {
    if be32(b, 8)? != 13 || b.get(12..16)? != b"IHDR" {
        return None;
    }
    let (w, h, depth, colour) = (be32(b, 16)?, be32(b, 20)?, *b.get(24)?, *b.get(25)?);
    let depth_ok = match colour {
        0 => [1, 2, 4, 8, 16].contains(&depth),
        3 => [1, 2, 4, 8].contains(&depth),
        2 | 4 | 6 => [8, 16].contains(&depth),
        _ => false,
    };
    (depth_ok && crc32(b.get(12..29)?) == be32(b, 29)?).then_some((w, h))
}

/// GIF: `GIF87a`/`GIF89a`, the logical screen, the global colour table if
/// flagged, then a block that can start a GIF: an image, an extension or
/// the trailer.
fn gif(b: &[u8]) -> Option<(u32, u32)> {
    if !matches!(b.get(..6)?, b"GIF87a" | b"GIF89a") {
        return None;
    }
    let (w, h, flags) = (le16(b, 6)?, le16(b, 8)?, *b.get(10)?);
    let table = if flags & 0x80 != 0 {
        3 << ((flags & 7) + 1)
    } else {
        0
    };
    matches!(b.get(13 + table)?, 0x2C | 0x21 | 0x3B).then_some((w, h))
}

/// JPEG: walks the segments after SOI (each `FF marker length`) to the
/// first start-of-frame, which holds the height and width.
fn jpeg(b: &[u8]) -> Option<(u32, u32)> {
    let mut at = 2;
    loop {
        if *b.get(at)? != 0xFF {
            return None;
        }
        let marker = *b.get(at + 1)?;
        match marker {
            // Fill bytes before a marker.
            0xFF => at += 1,
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => at += 2,
            // Start of frame (not DHT C4, JPG C8, DAC CC): P, Y, X.
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let h = u32::from(u16::from_be_bytes(b.get(at + 5..at + 7)?.try_into().ok()?));
                let w = u32::from(u16::from_be_bytes(b.get(at + 7..at + 9)?.try_into().ok()?));
                return Some((w, h));
            }
            // Start of scan or end of image before any frame: not a picture.
            0xDA | 0xD9 => return None,
            _ => {
                let len = usize::from(u16::from_be_bytes(b.get(at + 2..at + 4)?.try_into().ok()?));
                if len < 2 {
                    return None;
                }
                at += 2 + len;
            }
        }
    }
}

/// WebP: `RIFF size WEBP`, then a VP8 (lossy), VP8L (lossless) or VP8X
/// (extended) chunk, each with the size where its format puts it.
fn webp(b: &[u8]) -> Option<(u32, u32)> {
    if b.get(8..12)? != b"WEBP" {
        return None;
    }
    match b.get(12..16)? {
        b"VP8 " => {
            // A key frame's start code, then 14-bit width and height.
            (b.get(23..26)? == [0x9d, 0x01, 0x2a])
                .then(|| Some((le16(b, 26)? & 0x3FFF, le16(b, 28)? & 0x3FFF)))?
        }
        b"VP8L" => {
            if *b.get(20)? != 0x2F {
                return None;
            }
            let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
            Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        b"VP8X" => Some((le24(b, 24)? + 1, le24(b, 27)? + 1)),
        _ => None,
    }
}

/// A well-formed PNG header of `width` x `height` (8-bit RGBA): what the
/// tests and the demo upload. Only the header: enough for [`validate`].
pub fn sample_png(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // An empty IEND chunk closes it.
    png.extend(0u32.to_be_bytes());
    png.extend(b"IEND");
    png.extend(crc32(b"IEND").to_be_bytes());
    png
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
    fn the_crc_is_png_s() {
        // The CRC of IEND, as every PNG ends with it.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn headers_are_decoded_not_sniffed() {
        assert_eq!(dimensions("image/png", &sample_png(64, 32)), Some((64, 32)));
        let mut bad_crc = sample_png(64, 32);
        bad_crc[20] ^= 1;
        assert_eq!(dimensions("image/png", &bad_crc), None);
        assert_eq!(dimensions("image/png", b"\x89PNG\r\n\x1a\nrest"), None);

        let gif = b"GIF89a\x02\x00\x03\x00\x00\x00\x00\x2c";
        assert_eq!(dimensions("image/gif", gif), Some((2, 3)));
        let html = b"GIF89a<html><script>alert(1)</script></html>";
        assert_eq!(
            validate(Some("image/gif"), html).unwrap_err().status_code(),
            400
        );

        // SOI, an APP0 of length 4, then SOF0: precision, height 5, width 7.
        let jpeg = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08\x00\x05\x00\x07";
        assert_eq!(dimensions("image/jpeg", jpeg), Some((7, 5)));
        assert_eq!(dimensions("image/jpeg", b"\xff\xd8\xff<script>"), None);

        let mut vp8x = b"RIFF\0\0\0\0WEBPVP8X\0\0\0\0\0\0\0\0".to_vec();
        vp8x.extend([9, 0, 0, 19, 0, 0]);
        assert_eq!(dimensions("image/webp", &vp8x), Some((10, 20)));
    }

    #[test]
    fn uploads_must_be_the_image_they_claim() {
        let png = &sample_png(16, 16)[..];
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
            validate(Some("image/png"), &sample_png(5000, 1))
                .unwrap_err()
                .status_code(),
            400,
            "too wide"
        );
        assert_eq!(
            validate(Some("image/webp"), b"RIFF\0\0\0\0WAVE")
                .unwrap_err()
                .status_code(),
            400
        );
    }
}
