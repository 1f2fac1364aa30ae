//! Parsing a request into message metadata, per profile and request form.

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use relaylog::config::ProfileKind;
use relaylog::http1::Fields;
use relaylog::ingress::profile::RequestView;
use relaylog::simulator::Simulator;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let kannel = Simulator::profile_for(ProfileKind::Kannel);
    let jasmin = Simulator::profile_for(ProfileKind::Jasmin);
    let json = Simulator::profile_for(ProfileKind::Json);
    let none = HeaderMap::new();
    let get_q = "username=tester&password=foobar&from=ACME&to=%2B31612345678+%2B31687654321&text=Your+code+is+123456";
    g.bench_function("kannel_get", |b| {
        b.iter(|| {
            let v = RequestView {
                method: &Method::GET,
                path: "/cgi-bin/sendsms",
                query: Some(get_q),
                headers: Fields::Map(&none),
                body: b"",
            };
            kannel.extract(std::hint::black_box(&v)).unwrap()
        })
    });
    let mut xml_h = HeaderMap::new();
    xml_h.insert("content-type", HeaderValue::from_static("text/xml"));
    let xml = br#"<?xml version="1.0"?><message><submit><da><number>+31612345678</number></da><da><number>+31687654321</number></da><oa><number>ACME</number></oa><ud>Your code is 123456</ud><from><username>tester</username><password>foobar</password></from></submit></message>"#;
    g.bench_function("kannel_xml", |b| {
        b.iter(|| {
            let v = RequestView {
                method: &Method::POST,
                path: "/cgi-bin/sendsms",
                query: None,
                headers: Fields::Map(&xml_h),
                body: xml,
            };
            kannel.extract(std::hint::black_box(&v)).unwrap()
        })
    });
    let jq = "username=tester&password=foobar&to=%2B31612345678&from=ACME&content=Your%20code%20is%20123456";
    g.bench_function("jasmin_get", |b| {
        b.iter(|| {
            let v = RequestView {
                method: &Method::GET,
                path: "/send",
                query: Some(jq),
                headers: Fields::Map(&none),
                body: b"",
            };
            jasmin.extract(std::hint::black_box(&v)).unwrap()
        })
    });
    let mut json_h = HeaderMap::new();
    json_h.insert(
        "authorization",
        HeaderValue::from_static("Basic dGVzdGVyOmZvb2Jhcg=="),
    );
    let body =
        br#"{"from":"ACME","to":["+31612345678","+31687654321"],"text":"Your code is 123456"}"#;
    g.bench_function("json_post", |b| {
        b.iter(|| {
            let v = RequestView {
                method: &Method::POST,
                path: "/messages",
                query: None,
                headers: Fields::Map(&json_h),
                body,
            };
            json.extract(std::hint::black_box(&v)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
