//! Saves a grid of synthetic crops as an (uncompressed) PNG for eyeballing.
//!
//! `cargo run --release -p backroom-datasets --example crop_grid -- OUT.png [test|STORE]`
//! Each crop gets a 2-pixel frame: green = stocked, red = empty.

use std::io::Write;

use backroom_datasets::{IMAGE_SIZE, ShelfCrops, generate_store_split, generate_test_split};

const COLS: usize = 12;
const ROWS: usize = 8;
const BORDER: usize = 2;
const CELL: usize = IMAGE_SIZE + 2 * BORDER;

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn png(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(height * (width * 3 + 1));
    for row in rgb.chunks(width * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    // zlib stream of stored deflate blocks.
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "crops.png".to_owned());
    let which = args.next().unwrap_or_else(|| "test".to_owned());
    let crops: ShelfCrops = match which.parse::<u32>() {
        Ok(store) => generate_store_split(7, store, ROWS * COLS),
        Err(_) => generate_test_split(7, ROWS * COLS),
    };
    let (w, h) = (COLS * CELL, ROWS * CELL);
    let mut rgb = vec![0u8; w * h * 3];
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    for i in 0..crops.len().min(ROWS * COLS) {
        let (Some(img), Some(&label)) = (crops.image(i), crops.labels.get(i)) else {
            continue;
        };
        let frame = if label == 0 {
            [40u8, 200, 40]
        } else {
            [220u8, 30, 30]
        };
        let (cx, cy) = ((i % COLS) * CELL, (i / COLS) * CELL);
        for y in 0..CELL {
            for x in 0..CELL {
                let o = ((cy + y) * w + cx + x) * 3;
                let inside = (BORDER..BORDER + IMAGE_SIZE).contains(&x)
                    && (BORDER..BORDER + IMAGE_SIZE).contains(&y);
                for c in 0..3 {
                    rgb[o + c] = if inside {
                        let v = img[c * plane + (y - BORDER) * IMAGE_SIZE + (x - BORDER)];
                        (v * 255.0).round() as u8
                    } else {
                        frame[c]
                    };
                }
            }
        }
    }
    std::fs::File::create(path)?.write_all(&png(w, h, &rgb))
}
