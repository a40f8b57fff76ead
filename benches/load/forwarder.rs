//! The floor reference: a byte forwarder with nothing of a pooler in it (each client gets its
//! own server connection to the primary, kept for the client's life; no parsing, no pooling,
//! no routing), one task per client on one current-thread tokio runtime, as pgmeridian's
//! session threads run. It shows what the socket layer alone costs on this machine, beside
//! which PgBouncer's and pgmeridian's costs can be read. Must not grow features: it is a floor.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The hidden command line that turns this bench binary into the forwarder (a child process,
/// so that its CPU time is measured like the proxies').
pub const FLAG: &str = "--serve-forwarder";

/// Serves on 127.0.0.1:`listen`, forwarding to 127.0.0.1:`backend`, until killed.
pub fn serve(listen: u16, backend: u16) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", listen))
            .await
            .map_err(|e| format!("forwarder: bind {listen}: {e}"))?;
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(("127.0.0.1", backend)).await {
                    relay(client, server).await;
                }
            });
        }
    })
}

/// Moves bytes both ways until either side closes.
async fn relay(mut client: TcpStream, mut server: TcpStream) {
    if client.set_nodelay(true).is_err() || server.set_nodelay(true).is_err() {
        return;
    }
    let (mut from_client, mut from_server) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            r = client.read(&mut from_client) => match r {
                Ok(n) if n > 0 => if server.write_all(&from_client[..n]).await.is_err() { return },
                _ => return,
            },
            r = server.read(&mut from_server) => match r {
                Ok(n) if n > 0 => if client.write_all(&from_server[..n]).await.is_err() { return },
                _ => return,
            },
        }
    }
}
