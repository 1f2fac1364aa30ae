//! The upstream side of the relay: a keep-alive HTTP client pool per listener, rustls
//! (ring) for https upstreams. Requests go out as the client sent them, less hop-by-hop
//! headers; replies come back bounded in size.

pub mod http;
