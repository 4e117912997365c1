//! Update-chunk assembly (`backroom_coordinator::upload::UpdateAssembler`): arbitrary chunks
//! against an arbitrary declared size and trailer. It must never panic, never hold more than the
//! declared size plus the refused chunk, give back exactly the bytes it received after a
//! refusal, and accept only a complete, finite update whose checksum matches.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use backroom_coordinator::upload::UpdateAssembler;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

#[derive(Debug, Arbitrary)]
struct Upload<'a> {
    declared: u16,
    chunks: Vec<&'a [u8]>,
    /// Send the right checksum (of everything pushed) instead of `trailer`.
    honest_trailer: bool,
    trailer: &'a [u8],
}

fuzz_target!(|data: &[u8]| {
    let Ok(upload) = Upload::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let declared = usize::from(upload.declared);
    let mut assembler = UpdateAssembler::new(declared);
    let mut sent = Vec::new();
    let mut refused = false;
    for chunk in &upload.chunks {
        sent.extend_from_slice(chunk);
        if assembler.push(chunk).is_err() {
            refused = true;
            break;
        }
        assert!(
            assembler.received_bytes() <= declared * 4,
            "buffered past the declared size"
        );
    }
    if refused {
        assert_eq!(assembler.into_received_bytes(), sent);
        return;
    }
    let digest = Sha256::digest(&sent);
    let trailer = if upload.honest_trailer {
        digest.as_slice()
    } else {
        upload.trailer
    };
    match assembler.finish(trailer) {
        Ok((values, norm)) => {
            assert_eq!(trailer, digest.as_slice(), "accepted a wrong checksum");
            assert_eq!(values.len(), declared);
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(bytes, sent, "the values are not the bytes sent");
            assert!(
                values.iter().all(|v| v.is_finite()),
                "accepted a non-finite value"
            );
            let expected = values
                .iter()
                .map(|v| f64::from(*v) * f64::from(*v))
                .sum::<f64>()
                .sqrt();
            assert!(norm.is_finite() && (norm - expected).abs() <= 1e-9 * (1.0 + expected));
        }
        Err(_) => assert_eq!(assembler.into_received_bytes(), sent),
    }
});
