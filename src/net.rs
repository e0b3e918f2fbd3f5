//! Socket plumbing for the data path: where a redirected connection was headed
//! (`SO_ORIGINAL_DST`), how peerguard reaches the app (source binding, no-delay, a connect
//! deadline), and how its listeners are bound. No policy, no TLS: only sockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Source address of upstream connections to a pod IP over IPv4. Istio's inbound passthrough
/// uses it, and istio-iptables' `ISTIO_OUTPUT` chain returns early for it, so the app sees the
/// source it sees behind Istio, and peerguard next to istio-style outbound capture is not looped
/// back. 127/8 is local on Linux, so binding to it needs no IP_FREEBIND and no set-up.
pub const UPSTREAM_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// Listen backlog: large enough for connection bursts, and the kernel caps it at somaxconn.
const LISTEN_BACKLOG: i32 = 1024;

/// The destination a connection had before iptables REDIRECTed it to us: `SO_ORIGINAL_DST`
/// for IPv4 (including v4-mapped peers on a dual-stack socket, which conntrack tracks as IPv4)
/// and `IP6T_SO_ORIGINAL_DST` for IPv6.
///
/// A connection that conntrack does not track fails with `NotFound` (ENOENT); one that it
/// tracks without NAT reports the address it was accepted on.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let original = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(local) if local.ip().to_ipv4_mapped().is_some() => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    original.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the original destination is not an IP socket address",
        )
    })
}

/// The source address an upstream connection to `app` must be bound to, if any.
///
/// An IPv4 pod IP gets [`UPSTREAM_SOURCE_V4`]. Loopback targets and IPv6 pod IPs are not bound.
///
/// Why IPv6 is left unbound, unlike Istio (which binds to `::6`): `::6` is not a local address
/// unless someone adds it to `lo` (`ip -6 addr add ::6/128 dev lo`), so binding would make every
/// IPv6 upstream fail with "address not available" wherever that step was missed (explicit
/// mode, a node without the init container, `iptables` run without `--ipv6`). And nothing needs
/// it: peerguard installs no OUTPUT capture, and the nat table only sees a connection's first
/// packet at its first nat hook. A connection peerguard opens to its own pod IP takes its NAT
/// decision in OUTPUT (where there are no rules of ours), so when its packets come back in
/// through `lo` the PREROUTING redirect is not consulted: no loop is possible.
/// (`tests/transparent.rs` checks this with `--app-host original` over IPv6.)
pub fn upstream_source(app: IpAddr) -> Option<IpAddr> {
    match app {
        IpAddr::V4(ip) if !ip.is_loopback() => Some(IpAddr::V4(UPSTREAM_SOURCE_V4)),
        IpAddr::V4(_) | IpAddr::V6(_) => None,
    }
}

/// Connect to the app at `addr`, bound to `source` when given, with TCP_NODELAY (the proxy
/// relays whatever it has at once; batching is the endpoints' business) and a deadline: a
/// connect that takes longer than `timeout` fails with `TimedOut`.
pub async fn connect_upstream(addr: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = source {
        if source.is_ipv4() != addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("source {source} and destination {addr} are of different address families"),
            ));
        }
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.set_nodelay(true)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(connected) => connected,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {addr} took longer than {timeout:?}"),
        )),
    }
}

/// A listening socket on `addr`: SO_REUSEADDR (a restarted proxy rebinds at once despite
/// TIME_WAIT connections), a backlog of 1024, nonblocking, dual-stack for an IPv6 wildcard
/// address so `[::]:15006` also takes IPv4 connections, and TCP_NODELAY, which every accepted
/// connection inherits (a small reply must not wait for an ACK), so that no connection pays a
/// setsockopt of its own for it.
///
/// Must be called inside a tokio runtime; outside one it fails instead of panicking.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("bind_listener needs a running tokio runtime"));
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    const LOOPBACK_ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    #[test]
    fn ipv4_pod_ips_are_reached_from_the_passthrough_source() {
        assert_eq!(
            upstream_source("10.1.2.3".parse().unwrap()),
            Some("127.0.0.6".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_pod_ips_are_reached_unbound_as_no_address_needs_adding() {
        assert_eq!(upstream_source("fd00::5".parse().unwrap()), None);
    }

    #[test]
    fn loopback_apps_need_no_source_binding() {
        assert_eq!(upstream_source("127.0.0.1".parse().unwrap()), None);
        assert_eq!(upstream_source("127.9.9.9".parse().unwrap()), None);
        assert_eq!(upstream_source("::1".parse().unwrap()), None);
        assert_eq!(upstream_source("::ffff:127.0.0.1".parse().unwrap()), None);
    }

    #[tokio::test]
    async fn upstream_connections_come_from_the_bound_source() {
        let listener = bind_listener(LOOPBACK_ANY_PORT).unwrap();
        let addr = listener.local_addr().unwrap();
        let source = upstream_source("10.0.0.1".parse().unwrap());
        let client = connect_upstream(addr, source, Duration::from_secs(5)).await.unwrap();
        let (_server, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(UPSTREAM_SOURCE_V4));
        assert!(client.nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_source_of_the_other_family_is_refused() {
        let err = connect_upstream(
            LOOPBACK_ANY_PORT,
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_not_a_panic() {
        // Bind then drop: the port was free a moment ago and nothing listens on it now.
        let port = bind_listener(LOOPBACK_ANY_PORT).unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let err = connect_upstream(addr, None, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_connect_that_gets_no_answer_times_out() {
        // A listener whose accept queue is full drops new SYNs, so later connects hang: a
        // blackhole inside 127/8. Backlog 0 lets one connection queue; the rest wait.
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.bind(&LOOPBACK_ANY_PORT.into()).unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let mut queued = Vec::new();
        let mut outcome = None;
        for _ in 0..8 {
            match connect_upstream(addr, None, Duration::from_millis(300)).await {
                Ok(stream) => queued.push(stream),
                Err(err) => {
                    outcome = Some(err);
                    break;
                }
            }
        }
        let err = outcome.expect("a full accept queue must stop accepting connections");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("took longer than"), "{err}");
    }

    #[tokio::test]
    async fn a_connection_without_redirect_has_no_other_original_destination() {
        let listener = bind_listener(LOOPBACK_ANY_PORT).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Untracked (no conntrack in this network namespace): ENOENT. Tracked without NAT: the
        // address the connection really went to. Never a panic, never some other address.
        match original_dst(&server) {
            Ok(original) => assert_eq!(original, addr),
            Err(err) => assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}"),
        }
    }

    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        for addr in [LOOPBACK_ANY_PORT, "[::]:0".parse().unwrap()] {
            let listener = bind_listener(addr).unwrap();
            let port = listener.local_addr().unwrap().port();
            let _client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            assert!(server.nodelay().unwrap(), "accepted on {addr}: Nagle must be off");
        }
    }

    #[tokio::test]
    async fn an_ipv6_wildcard_listener_also_takes_ipv4() {
        let listener = bind_listener("[::]:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.unwrap();
        let (_server, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), "::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn binding_outside_a_runtime_is_an_error() {
        let err = bind_listener(LOOPBACK_ANY_PORT).unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }
}
