//! Connections: a client that trickles its headers (slowloris) is cut
//! after the header-read timeout, while whole requests are served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::spawn_app;

#[tokio::test]
async fn a_client_stalling_in_its_headers_is_cut_off() {
    let app = spawn_app("redis", |c| c.header_read_timeout_ms = 300).await;
    let addr = app.url.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"G").await.unwrap();
    // The guard only keeps a broken server from hanging the suite; the
    // claim is that the server closes the connection, however long it takes.
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // a 408 or similar, then the close
            }
        }
    })
    .await;
    assert_eq!(read, Ok(true), "the server closed the stalled connection");

    // A whole request on a fresh connection is served as ever.
    let mut whole = TcpStream::connect(&addr).await.unwrap();
    whole
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    whole.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}
