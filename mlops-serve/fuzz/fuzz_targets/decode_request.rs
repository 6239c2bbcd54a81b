//! Request decoding must never panic, whatever the bytes: JSON bodies and bodies
//! of the binary tensor extension with any header length. A decoded request must
//! encode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlops_serve::codec;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the JSON part's length for the binary form.
    let (json_len, body) = match data {
        [a, b, rest @ ..] => (Some(usize::from(u16::from_le_bytes([*a, *b]))), rest),
        _ => (None, data),
    };
    for len in [None, json_len] {
        if let Ok(request) = codec::decode_request(body, len) {
            let _ = codec::encode_request(&request, |_| true);
            let _ = codec::encode_request(&request, |_| false);
        }
    }
});
