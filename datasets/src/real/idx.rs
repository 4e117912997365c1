//! Opening possibly-gzipped data files, and the IDX ubyte format of (Fashion-)MNIST.
//!
//! IDX: a big-endian `u32` magic (`0x0000_08NN`: unsigned bytes, `NN` dimensions), one
//! big-endian `u32` per dimension, then the values row-major, one byte each.

use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use super::{ImageSet, ImageSetError, RealDataError};

/// Most images an IDX file may announce.
pub const MAX_IDX_IMAGES: usize = 10_000_000;
/// Largest image height or width an IDX file may announce.
pub const MAX_IDX_SIDE: usize = 4096;
/// Most pixels an IDX image file may hold in all (4 GiB once converted to `f32`).
const MAX_IDX_PIXELS: u64 = 1 << 30;

const IDX3_UBYTE_MAGIC: u32 = 0x0000_0803;
const IDX1_UBYTE_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const CHUNK_BYTES: usize = 64 * 1024;

/// A data file opened for reading, decompressed on the fly when it starts with the gzip magic.
pub(super) struct DataFile {
    path: PathBuf,
    gzip: bool,
    reader: Box<dyn BufRead>,
}

impl DataFile {
    pub(super) fn open(path: &Path) -> Result<Self, RealDataError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            ErrorKind::NotFound => RealDataError::NotFound {
                path: path.to_path_buf(),
            },
            _ => RealDataError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let mut buffered = BufReader::new(file);
        let gzip = buffered
            .fill_buf()
            .map_err(|source| RealDataError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .starts_with(&GZIP_MAGIC);
        let reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::new(MultiGzDecoder::new(buffered)))
        } else {
            Box::new(buffered)
        };
        Ok(Self {
            path: path.to_path_buf(),
            gzip,
            reader,
        })
    }

    /// A read error: a gzip file's reads fail when the stream is corrupt or cut short.
    pub(super) fn read_error(&self, source: io::Error) -> RealDataError {
        let path = self.path.clone();
        if self.gzip {
            RealDataError::Gzip { path, source }
        } else {
            RealDataError::Io { path, source }
        }
    }

    /// Fills as much of `buf` as the data allows; fewer bytes only at the end of the data.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, RealDataError> {
        let mut filled = 0;
        while filled < buf.len() {
            let Some(rest) = buf.get_mut(filled..) else {
                break;
            };
            match self.reader.read(rest) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(filled)
    }

    /// Whether the data is exhausted (for gzip, this also checks the stream's trailer).
    pub(super) fn at_end(&mut self) -> Result<bool, RealDataError> {
        loop {
            match self.reader.fill_buf() {
                Ok(rest) => return Ok(rest.is_empty()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    /// Appends one line (with its `\n`, if any) to `line`, reading at most `cap` bytes;
    /// returns the number of bytes read (0 at the end of the data).
    pub(super) fn read_line(
        &mut self,
        line: &mut Vec<u8>,
        cap: u64,
    ) -> Result<usize, RealDataError> {
        let result = (&mut self.reader).take(cap).read_until(b'\n', line);
        result.map_err(|e| self.read_error(e))
    }

    /// The reader, at most `cap` bytes of it, for parsers that take a [`Read`].
    pub(super) fn capped_reader(&mut self, cap: u64) -> impl Read + '_ {
        (&mut self.reader).take(cap)
    }

    /// Reads a big-endian header of `1 + n_dims` words; checks the magic.
    fn read_idx_header(&mut self, magic: u32, n_dims: usize) -> Result<Vec<u32>, RealDataError> {
        let header_len = 4 * (1 + n_dims);
        let mut header = vec![0u8; header_len];
        let got = self.read_up_to(&mut header)?;
        let words: Vec<u32> = header
            .chunks_exact(4)
            .map(|w| w.try_into().map_or(0, u32::from_be_bytes))
            .collect();
        let found = words.first().copied().unwrap_or(0);
        if got >= 4 && found != magic {
            return Err(RealDataError::BadMagic {
                path: self.path.clone(),
                expected: magic,
                found,
            });
        }
        if got < header_len {
            return Err(RealDataError::Truncated {
                path: self.path.clone(),
                expected: header_len as u64,
                got: got as u64,
            });
        }
        Ok(words.into_iter().skip(1).collect())
    }

    /// Reads exactly `len` data bytes after a header of `header_len`, in chunks handed to
    /// `sink`, then checks that nothing follows. Memory grows only with bytes actually read.
    fn read_body(
        &mut self,
        header_len: u64,
        len: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), RealDataError>,
    ) -> Result<(), RealDataError> {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done).map_or(CHUNK_BYTES, |n| n.min(CHUNK_BYTES));
            let Some(buf) = chunk.get_mut(..want) else {
                break;
            };
            let n = self.read_up_to(buf)?;
            if n == 0 {
                return Err(RealDataError::Truncated {
                    path: self.path.clone(),
                    expected: header_len + len,
                    got: header_len + done,
                });
            }
            sink(buf.get(..n).unwrap_or_default())?;
            done += n as u64;
        }
        if !self.at_end()? {
            return Err(RealDataError::TrailingData {
                path: self.path.clone(),
                expected: header_len + len,
            });
        }
        Ok(())
    }
}

/// Loads grey images from an IDX3 ubyte file (magic `0x00000803`: count, rows, columns) and
/// their labels from an IDX1 ubyte file (magic `0x00000801`: count); either may be gzipped.
/// Pixels are scaled from `0..=255` to `[0, 1]`; every label must be below `num_classes`.
pub fn load_idx_pair(
    images_path: impl AsRef<Path>,
    labels_path: impl AsRef<Path>,
    num_classes: usize,
) -> Result<ImageSet, RealDataError> {
    let (images_path, labels_path) = (images_path.as_ref(), labels_path.as_ref());
    let mut images_file = DataFile::open(images_path)?;
    let dims = images_file.read_idx_header(IDX3_UBYTE_MAGIC, 3)?;
    let bad_dims = |reason| RealDataError::BadDimensions {
        path: images_path.to_path_buf(),
        dims: dims.clone(),
        reason,
    };
    let [count, height, width] = [0, 1, 2].map(|i| dims.get(i).map_or(0, |&d| d as usize));
    if count > MAX_IDX_IMAGES {
        return Err(bad_dims("more than 10,000,000 images"));
    }
    if !(1..=MAX_IDX_SIDE).contains(&height) || !(1..=MAX_IDX_SIDE).contains(&width) {
        return Err(bad_dims("image sides must be in 1..=4096"));
    }
    let total_pixels = count as u64 * height as u64 * width as u64;
    if total_pixels > MAX_IDX_PIXELS {
        return Err(bad_dims("more than 2^30 pixels in all"));
    }
    let mut set =
        ImageSet::new(1, height, width, num_classes).map_err(|source| RealDataError::Invalid {
            path: labels_path.to_path_buf(),
            source,
        })?;

    let mut labels_file = DataFile::open(labels_path)?;
    let label_dims = labels_file.read_idx_header(IDX1_UBYTE_MAGIC, 1)?;
    let label_count = label_dims.first().map_or(0, |&d| d as usize);
    if label_count != count {
        return Err(RealDataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            images: count,
            labels: label_count,
        });
    }
    let labels = &mut set.labels;
    labels_file.read_body(8, count as u64, |chunk| {
        for &label in chunk {
            if usize::from(label) >= num_classes {
                return Err(RealDataError::Invalid {
                    path: labels_path.to_path_buf(),
                    source: ImageSetError::LabelOutOfRange {
                        index: labels.len(),
                        label,
                        num_classes,
                    },
                });
            }
            labels.push(label);
        }
        Ok(())
    })?;

    let images = &mut set.images;
    images_file.read_body(16, total_pixels, |chunk| {
        images.extend(chunk.iter().map(|&b| f32::from(b) / 255.0));
        Ok(())
    })?;
    Ok(set)
}
