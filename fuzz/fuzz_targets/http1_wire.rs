//! The fast path's HTTP/1.1 wire code (`relaylog::http1`), where request smuggling and
//! reply desync would live:
//!
//! - a request head the fast path takes goes upstream as a request that parses back
//!   whole, with the body relaylog read (its length and nothing after it), no
//!   hop-by-hop header, and one Host;
//! - an upstream reply is read without panicking, within its body limit, and a
//!   connection is only called reusable when nothing was left over.
#![no_main]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relaylog::http1::{self, Fields, HOP_BY_HOP, MAX_HEADERS, Take};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        request(data);
    } else {
        reply(data, selector & 2 != 0);
    }
});

fn request(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(data) else {
        return;
    };
    let Take::Lean { content_length, .. } = http1::take(&req) else {
        return;
    };
    // Two Hosts are refused by every profile (`check_host`) before anything goes up.
    if Fields::Raw(req.headers).get_all("host").count() > 1 {
        return;
    }
    let available = data.len() - head_len;
    let body = &data[head_len..head_len + content_length.min(available)];
    let (method, target) = (req.method.unwrap(), req.path.unwrap());
    let mut out = Vec::new();
    http1::write_request(
        &mut out,
        method,
        target,
        Fields::Raw(req.headers),
        ("upstream:80", false),
        body,
    );

    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 2];
    let mut sent = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = sent.parse(&out) else {
        panic!("the forwarded head does not parse back");
    };
    assert_eq!((sent.method, sent.path), (Some(method), Some(target)));
    let fields = Fields::Raw(sent.headers);
    for hop in HOP_BY_HOP {
        assert!(!fields.contains(hop), "{hop} forwarded");
    }
    assert_eq!(fields.get_all("host").count(), 1, "one Host");
    assert!(!fields.contains("transfer-encoding"));
    let lengths: Vec<_> = fields.get_all("content-length").collect();
    assert!(lengths.len() <= 1);
    let sent_len = lengths.first().map_or(0, |v| {
        std::str::from_utf8(v).unwrap().parse::<usize>().unwrap()
    });
    assert_eq!(sent_len, body.len(), "the body's length");
    assert_eq!(&out[n..], body, "the body, and nothing after it");
}

fn reply(data: &[u8], head_request: bool) {
    let mut io = data;
    let mut buf = BytesMut::new();
    let max = 4096;
    let result = {
        let fut = std::pin::pin!(http1::read_reply(&mut io, &mut buf, head_request, max));
        // A slice is always ready: one poll finishes it.
        let Poll::Ready(result) = fut.poll(&mut Context::from_waker(Waker::noop())) else {
            panic!("a read from a slice was pending");
        };
        result
    };
    if let Ok(reply) = result {
        assert!(reply.body.len() <= max);
        assert!((100..1000).contains(&reply.status) && !(100..200).contains(&reply.status));
        if reply.reusable {
            assert!(buf.is_empty(), "reusable with bytes left over");
        }
        reply.fields(|f| f.iter().count());
    }
}
