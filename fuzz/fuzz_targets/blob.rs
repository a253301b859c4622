//! Blob chunks as a receiver gets them from a host or a peer (docs/protocol.md §15): a
//! manifest and chunks of any bytes, under a reference whose size and root come from the
//! input too; and chunk requests and answers of `/sotto/blob/1` as a node reads them off the
//! wire. Nothing may panic; nothing but the real chunks may open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::blob::{
    address, unpad_from_host, BlobRef, ChunkAnswer, ChunkRequest, Opener, Sealer,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut size = [0u8; 8];
    let n = rest.len().min(8);
    size[..n].copy_from_slice(&rest[..n]);
    let rest = &rest[n..];
    if mode % 4 == 2 {
        // A chunk request or answer off the wire: one that decodes re-encodes alike.
        if let Ok(r) = ChunkRequest::from_bytes(data) {
            assert_eq!(ChunkRequest::from_bytes(&r.to_bytes().expect("encodes")).ok(), Some(r));
        }
        if let Ok(a) = ChunkAnswer::from_bytes(data) {
            assert_eq!(ChunkAnswer::from_bytes(&a.to_bytes().expect("encodes")).ok(), Some(a));
        }
        let _ = unpad_from_host(rest);
        return;
    }
    if mode % 2 == 0 {
        // Arbitrary bytes as a manifest, under a root that matches them.
        let blob = BlobRef {
            root: address(rest),
            key: [7; 32],
            size: u64::from_be_bytes(size),
        };
        let _ = Opener::new(&blob, rest);
    } else {
        // A real small blob, then arbitrary bytes as each of its chunks.
        let len = usize::from(u16::from_be_bytes([size[0], size[1]]));
        let mut rng = rand::rngs::mock::StepRng::new(u64::from(mode), 1);
        let Ok(mut sealer) = Sealer::new(len as u64, &mut rng) else {
            return;
        };
        let plain = vec![1u8; len];
        for chunk in plain.chunks(sotto_protocol::blob::CHUNK_BYTES) {
            if sealer.push(chunk).is_err() {
                return;
            }
        }
        let Ok((manifest, blob)) = sealer.finish() else {
            return;
        };
        let opener = Opener::new(&blob, &manifest.bytes).expect("a real manifest opens");
        for i in 0..opener.addresses().len() as u32 + 1 {
            assert!(
                opener.open_chunk(i, rest).is_err(),
                "arbitrary bytes opened"
            );
        }
    }
});
