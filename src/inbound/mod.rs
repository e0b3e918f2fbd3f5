//! The data path, one stage a file:
//! - `listener`: accept loop, connection cap, one task and one record per connection.
//! - `connection`: one connection through the stages below.
//! - `classify`: first bytes under deadline and size cap -> `Sniffed`.
//! - `decide`: (mode, `Sniffed`, ALPN rules) -> `Action` and `Reason`; pure.
//! - `terminate`: rustls handshake, peer SPIFFE identity.
//! - `tls_stream`: the terminated connection over rustls' unbuffered API, buffers freed when idle.
//! - `forward`: connect to the app, copy both ways, half-close.
//! - `splice`: a bulk direction between two sockets moves through a kernel pipe.
//! - `cut`: what ends the connections a drain leaves open.
//! - `unread`: bytes in hand that go to a reader before anything read later.

pub mod classify;
pub(crate) mod connection;
pub(crate) mod cut;
pub mod decide;
mod forward;
pub(crate) mod listener;
mod splice;
pub mod terminate;
pub mod tls_stream;
pub mod unread;
