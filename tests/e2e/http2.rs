//! A reader for what a gRPC client sent on one HTTP/2 connection (the decrypted bytes that the
//! coordinator's wire tap recorded): the requests, each with its path and its gRPC messages.
//! Strict: anything it does not understand is an error, so nothing can hide in a frame type the
//! test skips.

use std::collections::BTreeMap;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// One client request: its `:path` and the gRPC messages of its body (length-prefixed frames
/// already split, compression flag checked to be 0).
#[derive(Debug, Default)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub messages: Vec<Vec<u8>>,
    body: Vec<u8>,
}

/// Parses a whole client-to-server byte stream. A trailing partial frame (the connection was
/// cut mid-frame) is an error.
pub fn client_requests(bytes: &[u8]) -> Result<Vec<Request>, String> {
    let mut rest = bytes
        .strip_prefix(PREFACE)
        .ok_or("the stream does not start with the HTTP/2 client preface")?;
    let mut decoder = fluke_hpack::Decoder::new();
    let mut streams: BTreeMap<u32, Request> = BTreeMap::new();
    let mut pending_block: Option<(u32, Vec<u8>)> = None;
    while !rest.is_empty() {
        if rest.len() < 9 {
            return Err(format!("{} trailing bytes are not a frame", rest.len()));
        }
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let kind = rest[3];
        let flags = rest[4];
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        let payload = rest
            .get(9..9 + length)
            .ok_or_else(|| format!("frame of {length} bytes is cut short"))?;
        rest = &rest[9 + length..];
        match kind {
            DATA => {
                let data = unpad(payload, flags)?;
                streams
                    .get_mut(&stream)
                    .ok_or_else(|| format!("DATA on unknown stream {stream}"))?
                    .body
                    .extend_from_slice(data);
            }
            HEADERS => {
                let mut block = unpad(payload, flags)?;
                if flags & PRIORITY_FLAG != 0 {
                    block = block.get(5..).ok_or("HEADERS priority field cut short")?;
                }
                if flags & END_HEADERS != 0 {
                    add_headers(&mut decoder, &mut streams, stream, block)?;
                } else {
                    pending_block = Some((stream, block.to_vec()));
                }
            }
            CONTINUATION => {
                let (id, mut block) = pending_block
                    .take()
                    .ok_or("CONTINUATION without a HEADERS frame")?;
                if id != stream {
                    return Err("CONTINUATION on another stream".into());
                }
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    add_headers(&mut decoder, &mut streams, stream, &block)?;
                } else {
                    pending_block = Some((id, block));
                }
            }
            SETTINGS | PING | WINDOW_UPDATE | RST_STREAM | PRIORITY | GOAWAY => {
                // Control frames: flow control and connection settings, no application data.
                // Their payloads are bounded by the protocol (GOAWAY's debug data aside).
                if kind == GOAWAY && payload.len() > 8 {
                    return Err("GOAWAY carries debug data".into());
                }
            }
            other => return Err(format!("unexpected frame type {other:#x}")),
        }
    }
    let mut requests = Vec::new();
    for (id, mut request) in streams {
        request.messages = grpc_messages(&request.body)
            .map_err(|e| format!("stream {id} ({}): {e}", request.path))?;
        requests.push(request);
    }
    Ok(requests)
}

fn unpad(payload: &[u8], flags: u8) -> Result<&[u8], String> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let pad = usize::from(*payload.first().ok_or("padded frame without pad length")?);
    if payload.len() <= pad {
        return Err("padding longer than the frame".to_owned());
    }
    let (data, padding) = payload[1..].split_at(payload.len() - 1 - pad);
    // Padding must be zeros (RFC 9113), so nothing can ride in it.
    if padding.iter().any(|&b| b != 0) {
        return Err("non-zero padding".to_owned());
    }
    Ok(data)
}

fn add_headers(
    decoder: &mut fluke_hpack::Decoder<'_>,
    streams: &mut BTreeMap<u32, Request>,
    stream: u32,
    block: &[u8],
) -> Result<(), String> {
    let headers = decoder
        .decode(block)
        .map_err(|e| format!("HPACK decoding failed on stream {stream}: {e:?}"))?;
    let request = streams.entry(stream).or_default();
    // gRPC clients send one header block per request and no trailers.
    if !request.headers.is_empty() {
        return Err(format!("a second header block on stream {stream}"));
    }
    for (name, value) in headers {
        let name = String::from_utf8_lossy(&name).into_owned();
        if name == ":path" {
            request.path = String::from_utf8_lossy(&value).into_owned();
        }
        request.headers.push((name, value));
    }
    Ok(())
}

fn grpc_messages(mut body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err("a gRPC message prefix is cut short".into());
        }
        if body[0] != 0 {
            return Err("a compressed gRPC message (the node never compresses)".into());
        }
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let message = body
            .get(5..5 + length)
            .ok_or("a gRPC message is cut short")?;
        messages.push(message.to_vec());
        body = &body[5 + length..];
    }
    Ok(messages)
}
