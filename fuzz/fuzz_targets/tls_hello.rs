//! Fuzzes the TLS ClientHello reader (records and bare handshake messages).
//!
//! `cargo +nightly fuzz run tls_hello corpus/tls_hello seeds/tls_hello`

#![no_main]

use libfuzzer_sys::fuzz_target;
use patronus_core::dpi::tls::{
    client_hello, client_hello_from_records, host_name, Hello, MAX_HELLO_LEN,
};

/// Checks a result; `bare` when `data` was a handshake message without a record header.
fn check(data: &[u8], hello: Hello<'_>, bare: bool) {
    match hello {
        Hello::Client(h) => {
            if let Some(name) = h.server_name {
                // A name comes from the input and passes the host-name check.
                assert_eq!(host_name(name.as_bytes()), Some(name));
                let start = name.as_ptr() as usize - data.as_ptr() as usize;
                assert!(start + name.len() <= data.len());
            }
            if let Some(alpn) = h.alpn {
                assert!(!alpn.is_empty() && alpn.len() <= 255);
            }
        }
        Hello::Incomplete { needed } => {
            // More is needed than a bare message had; never more than a hello can be.
            assert!(!bare || needed > data.len(), "{needed} <= {}", data.len());
            assert!(needed <= MAX_HELLO_LEN + 4 + 5);
        }
        Hello::Server | Hello::OtherRecord | Hello::NotTls => {}
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, client_hello_from_records(data), false);
    check(data, client_hello(data), true);
});
