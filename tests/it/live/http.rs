//! One HTTP/1.1 GET over a plain socket (for answers that are not event streams).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::WAIT;

/// The status and body (chunk sizes included, if chunked) of `GET path`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let exchange = async {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        socket.read_to_string(&mut answer).await.expect("read");
        answer
    };
    let answer = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} took longer than {WAIT:?}"));
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The ids of the first `n` `change` events of `GET path` (an event stream), read with
/// `Last-Event-ID: last_id` when given.
pub async fn change_ids(
    addr: SocketAddr,
    path: &str,
    last_id: Option<&str>,
    n: usize,
) -> Vec<String> {
    let exchange = async {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        if let Some(id) = last_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).await.expect("send");
        let mut text = String::new();
        let mut buffer = [0u8; 4096];
        loop {
            let ids: Vec<String> = text
                .split("event: change\nid: ")
                .skip(1)
                .filter_map(|rest| rest.split_once('\n').map(|(id, _)| id.to_owned()))
                .collect();
            if ids.len() >= n {
                return ids[..n].to_vec();
            }
            let read = socket.read(&mut buffer).await.expect("read");
            assert!(read > 0, "the stream ended: {text}");
            text.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{n} change events from {path} took longer than {WAIT:?}"))
}
