//! The accept loop: a connection cap that pauses accepting, one task per connection, and a
//! shutdown signal that closes the listener while open connections carry on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::AppHost;
use crate::inbound::connection::{Accepted, DataPath, Target};
use crate::net;

/// Where a listener's connections go.
#[derive(Debug, Clone)]
pub enum Route {
    /// `--listen LISTEN=APP`: always to APP. `listen` is the bound address, the destination
    /// authorization sees (unless it is a wildcard, which the socket then tells).
    Explicit { app: SocketAddr, listen: SocketAddr },
    /// `--inbound`: to the original destination port, at `app_host`. Connections whose original
    /// destination is one of `own_ports` are refused: they would loop back into peerguard.
    Transparent { app_host: AppHost, own_ports: Arc<[u16]> },
}

/// A bound listening socket and where its connections go.
pub struct Listener {
    pub tcp: TcpListener,
    pub route: Route,
}

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

impl Listener {
    /// Accepts until `shutdown` turns true, then drops the listening socket. Each connection
    /// holds one permit of `cap` until its record is written; when none is free, accepting
    /// waits (the kernel backlog holds new clients meanwhile).
    pub async fn run(self, data_path: Arc<DataPath>, cap: Arc<Semaphore>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let permit = tokio::select! {
                permit = cap.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_closed) => return,
                },
                _ = stopped(&mut shutdown) => return,
            };
            let (client, source) = tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => return,
            };
            let target = target_of(&self.route, &client);
            let accepted = Accepted {
                client,
                source,
                target,
                permit,
            };
            tokio::spawn(data_path.clone().serve(accepted));
        }
    }
}

/// Where a connection goes, or `Err(port)` when its original destination is peerguard itself.
fn target_of(route: &Route, client: &TcpStream) -> Result<Target, u16> {
    match route {
        Route::Explicit { app, listen } => Ok(Target {
            app: *app,
            destination: (!listen.ip().is_unspecified()).then(|| listen.ip()),
        }),
        Route::Transparent { app_host, own_ports } => {
            // No original destination means no redirect happened: the client dialled the
            // transparent listener itself.
            let original =
                net::original_dst(client).map_err(|_| client.local_addr().map_or(0, |local| local.port()))?;
            if own_ports.contains(&original.port()) {
                return Err(original.port());
            }
            let app = match app_host {
                AppHost::Address(ip) => SocketAddr::new(*ip, original.port()),
                AppHost::OriginalDestination => original,
            };
            Ok(Target {
                app,
                destination: Some(original.ip()),
            })
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
