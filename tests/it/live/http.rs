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

/// An event stream (`GET path`) read on demand: the test decides when to read, so it
/// can stop reading, as a browser tab that is stuck would.
pub struct EventStream {
    socket: TcpStream,
    /// Bytes read and not yet taken apart (chunk framing included).
    raw: Vec<u8>,
    /// The SSE text taken out of the chunks, not yet split into events.
    text: String,
    /// The body ended (the zero-size chunk).
    ended: bool,
}

/// One SSE event: its `event:` type, `id:` and `data:` (lines joined with `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub kind: String,
    pub id: Option<String>,
    pub data: String,
}

impl EventStream {
    /// Sends the request on a socket whose receive buffer is `recv_buffer` bytes (small:
    /// a reader that stops fills it, and then the server's side, quickly) and returns
    /// once the server's `ready` event has come.
    pub async fn open(addr: SocketAddr, path: &str, recv_buffer: u32) -> EventStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let mut socket = socket.connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        socket.write_all(request.as_bytes()).await.expect("send");
        let mut stream = EventStream {
            socket,
            raw: Vec::new(),
            text: String::new(),
            ended: false,
        };
        let head = loop {
            if let Some(end) = stream.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&stream.raw[..end]).into_owned();
                stream.raw.drain(..end + 4);
                break head;
            }
            stream.read().await;
        };
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "GET {path}: not chunked: {head}"
        );
        let ready = stream.next().await.expect("the ready event");
        assert_eq!(ready.kind, "ready", "the first event of {path}");
        stream
    }

    async fn read(&mut self) {
        let mut buffer = [0u8; 16 * 1024];
        let read = tokio::time::timeout(WAIT, self.socket.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no event for {WAIT:?}"))
            .expect("read");
        assert!(read > 0, "the server closed the event stream");
        self.raw.extend_from_slice(&buffer[..read]);
    }

    /// Moves whole chunks from `raw` to `text`.
    fn dechunk(&mut self) {
        loop {
            let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .unwrap_or_else(|| panic!("a bad chunk size: {:?}", &self.raw[..line]));
            if self.raw.len() < line + 2 + size + 2 {
                return;
            }
            let data = &self.raw[line + 2..line + 2 + size];
            self.text
                .push_str(std::str::from_utf8(data).expect("UTF-8 events"));
            assert_eq!(&self.raw[line + 2 + size..line + 4 + size], b"\r\n");
            self.raw.drain(..line + 4 + size);
            if size == 0 {
                self.ended = true;
                return;
            }
        }
    }

    /// The next event (comments skipped), or `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            self.dechunk();
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = SseEvent {
                    kind: "message".to_owned(),
                    id: None,
                    data: String::new(),
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(kind) = line.strip_prefix("event: ") {
                        event.kind = kind.to_owned();
                    } else if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.to_owned());
                    } else if let Some(line) = line.strip_prefix("data: ") {
                        data.push(line);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            if self.ended {
                return None;
            }
            self.read().await;
        }
    }
}
