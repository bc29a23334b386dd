//! Standard Webhooks signatures. Input lines: the secret, the message id, the timestamp, the
//! `webhook-signature` header, then the body (the rest, any bytes). Verification never panics
//! on any header, body or secret; what Herald signs verifies; a flipped body byte, a flipped
//! signature bit, another timestamp or another message id does not.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use herald::webhooks::signature::{SigningKey, sign, verify};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

const TOLERANCE: Duration = Duration::from_secs(300);

fn field(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (secret, rest) = field(data);
    let (msg_id, rest) = field(rest);
    let (timestamp, rest) = field(rest);
    let (header, body) = field(rest);
    let secret = String::from_utf8_lossy(secret);
    let msg_id = String::from_utf8_lossy(msg_id);
    let header = String::from_utf8_lossy(header);
    let timestamp: i64 = String::from_utf8_lossy(timestamp)
        .trim()
        .parse()
        .unwrap_or(1_614_265_330);
    let Ok(key) = SigningKey::parse(&secret) else {
        return;
    };
    // Any header, at the message's time and far from it.
    for now in [timestamp, timestamp.wrapping_add(301), i64::MIN, i64::MAX] {
        let _ = verify(&key, &msg_id, timestamp, body, &header, now, TOLERANCE);
    }
    // Sign, then verify: accepted, also among other signatures.
    let signed = sign(std::slice::from_ref(&key), &msg_id, timestamp, body);
    let ok = |id: &str, ts: i64, body: &[u8], header: &str| {
        verify(&key, id, ts, body, header, timestamp, TOLERANCE).is_ok()
    };
    assert!(
        ok(&msg_id, timestamp, body, &signed),
        "own signature refused"
    );
    assert!(ok(
        &msg_id,
        timestamp,
        body,
        &format!("v1a,xyz {header} {signed}")
    ));
    // Tampering is refused.
    if !body.is_empty() {
        let mut flipped = body.to_vec();
        let i = usize::from(body[0]) % flipped.len();
        flipped[i] ^= 0x01;
        assert!(
            !ok(&msg_id, timestamp, &flipped, &signed),
            "flipped body accepted"
        );
    }
    let mut mac = STANDARD
        .decode(&signed["v1,".len()..])
        .expect("sign writes base64");
    assert_eq!(mac.len(), 32, "a v1 signature is an HMAC-SHA256");
    mac[usize::from(body.first().copied().unwrap_or(0)) % 32] ^= 0x80;
    let tampered = format!("v1,{}", STANDARD.encode(&mac));
    assert!(
        !ok(&msg_id, timestamp, body, &tampered),
        "flipped signature accepted"
    );
    assert!(
        !ok(&format!("{msg_id}x"), timestamp, body, &signed),
        "other id accepted"
    );
    if let Some(later) = timestamp.checked_add(1) {
        assert!(
            verify(&key, &msg_id, later, body, &signed, later, TOLERANCE).is_err(),
            "other timestamp accepted"
        );
    }
});
