//! The bare relay: the least any relay in sipguard's position must do, written for the benchmark
//! as the floor the others are measured against. One receive loop on the public socket; per client
//! address an upstream socket connected to the PBX and a task that carries the PBX's datagrams
//! back. No parsing, no policy, no metrics, no expiry; one thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;

/// Relays between clients on `listen` and `pbx` until the process is killed.
pub fn run(listen: SocketAddr, pbx: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let public = Arc::new(UdpSocket::bind(listen).await?);
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_535];
        loop {
            let (len, client) = public.recv_from(&mut buf).await?;
            let upstream = match upstreams.get(&client) {
                Some(upstream) => Arc::clone(upstream),
                None => {
                    let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
                    upstream.connect(pbx).await?;
                    upstreams.insert(client, Arc::clone(&upstream));
                    tokio::spawn(back_to_client(
                        Arc::clone(&upstream),
                        Arc::clone(&public),
                        client,
                    ));
                    upstream
                }
            };
            let _ = upstream.send(&buf[..len]).await;
        }
    })
}

/// Per-session buffer: the PBX's answers in the benchmark are far below a UDP MTU, and thousands
/// of sessions with 64 KiB each would measure memory, not relaying.
const SESSION_BUFFER: usize = 4096;

async fn back_to_client(upstream: Arc<UdpSocket>, public: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; SESSION_BUFFER];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(len) => {
                let _ = public.send_to(&buf[..len], client).await;
            }
            // ICMP port unreachable from an earlier send: the PBX may come back.
            Err(_) => continue,
        }
    }
}
