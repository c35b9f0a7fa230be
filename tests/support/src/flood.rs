//! Sockets that connect and say nothing: the attack the auth deadline and
//! the share of the unauthenticated are there for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Connects from `source` (a loopback address such as 127.0.0.2) and says
/// nothing, again each time the server closes it, until `stop`; counts each
/// close in `closed`.
pub async fn silent_socket(
    addr: SocketAddr,
    source: &str,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
) {
    let source: SocketAddr = format!("{source}:0").parse().expect("source address");
    let mut chunk = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(source).expect("bind the source address");
        let Ok(mut stream) = socket.connect(addr).await else {
            continue;
        };
        loop {
            let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut chunk));
            match read.await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => {}
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
    }
}
