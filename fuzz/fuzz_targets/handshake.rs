//! Fuzzes the handshake: `Hello::decode` on arbitrary bytes, and on arbitrary bytes after a valid
//! sniff header and version (so that the fuzzer spends its time past the magic), then the
//! server's reply to whatever came out.
//!
//! Beyond "never panics": a decoded hello took no more bytes than it was given, every shorter
//! prefix asks for more, it re-encodes to a hello that decodes to itself, and the server answers
//! a failed decode with a refusal unless the peer does not speak teleport at all.

#![no_main]

use libfuzzer_sys::fuzz_target;
use teleport_transport::ProtocolError;
use teleport_transport::compress::{Codec, CodecSet};
use teleport_transport::frame::Limits;
use teleport_transport::handshake::{self, HELLO_LEN, Hello, MAGIC, Settings, VERSION};

fuzz_target!(|data: &[u8]| {
    let local = Settings {
        codec: Codec::ALL[usize::from(data.first().copied().unwrap_or(0)) % Codec::ALL.len()],
        accept: CodecSet::from_bits(data.get(1).copied().unwrap_or(0)),
        limits: Limits::default(),
        max_concurrent: 64,
        features: 0,
    };
    check(&local, data);
    let mut prefixed = [&MAGIC[..], &[VERSION]].concat();
    prefixed.extend_from_slice(data);
    check(&local, &prefixed);
});

fn check(local: &Settings, buf: &[u8]) {
    match Hello::decode(buf) {
        Ok(Some((hello, taken))) => {
            assert!((HELLO_LEN..=buf.len()).contains(&taken));
            for cut in [0, 1, 12, 13, 15, 16, taken - 1] {
                assert_eq!(Hello::decode(&buf[..cut]), Ok(None), "prefix of {cut}");
            }
            let mut again = Vec::new();
            hello.encode(&mut again);
            assert_eq!(Hello::decode(&again), Ok(Some((hello, HELLO_LEN))));
            let (reply, outcome) = handshake::server_reply(local, Ok(&hello));
            let reply = reply.expect("a teleport peer is always answered");
            assert_eq!(reply.refusal.is_some(), outcome.is_err());
            let finished = handshake::client_finish(local, &reply);
            if reply.refusal.is_some() {
                assert!(finished.is_err());
            }
        }
        // The longest hello a v1 peer waits for: a 16-byte head and a 1 KiB body.
        Ok(None) => assert!(buf.len() < 16 + 1024),
        Err(error) => {
            let (reply, outcome) = handshake::server_reply(local, Err(&error));
            assert_eq!(outcome, Err(error.clone()));
            assert_eq!(reply.is_none(), error == ProtocolError::BadMagic);
            if let Some(reply) = reply {
                assert!(reply.refusal.is_some());
            }
        }
    }
}
