//! Fuzzes everything that turns client bytes into frames: the length-delimited stream reader
//! (fed in two pieces at a data-chosen split) and the protobuf and JSON frame decoders.
//! Any panic, or an allocation beyond the frame limit, is a bug.

#![no_main]

use chorus_gateway::frame::{Encoding, FrameReader, decode_client_frame};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let _ = decode_client_frame(data, Encoding::Protobuf, LIMIT);
    let _ = decode_client_frame(data, Encoding::Json, LIMIT);
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut reader = FrameReader::new(LIMIT);
    for piece in [&data[..split], &data[split..]] {
        reader.extend(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    let _ = decode_client_frame(&frame, Encoding::Protobuf, LIMIT);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = reader.finish();
});
