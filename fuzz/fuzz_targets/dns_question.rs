//! Fuzzes the DNS question reader (UDP and TCP framing), the walk over a
//! response's answers, and the strict check that lets DNS be found on any port.
//!
//! `cargo +nightly fuzz run dns_question corpus/dns_question seeds/dns_question`

#![no_main]

use libfuzzer_sys::fuzz_target;
use patronus_core::dpi::dns::{
    answers, is_exact_message, question, question_tcp, Answer, MAX_NAME,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; MAX_NAME];
    if let Some(q) = question(data, &mut buf) {
        assert!(q.name.len() <= MAX_NAME);
        assert!(q
            .name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()));
    }
    if let Some(q) = question_tcp(data, &mut buf) {
        assert!(q.name.len() <= MAX_NAME);
    }
    if is_exact_message(data) {
        // What the strict check accepts, the question reader reads.
        assert!(question(data, &mut buf).is_some());
    }
    let mut records = 0;
    answers(data, |answer| {
        records += 1;
        if let Answer::Alias(name) = answer {
            assert!(name.len() <= MAX_NAME);
        }
    });
    assert!(records <= 64, "at most 64 answers are read");
});
