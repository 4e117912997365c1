//! Assembles an uploaded delta chunk by chunk, refusing it at the first bad byte: too long,
//! non-finite values, wrong checksum. Nothing beyond the declared size (and the one chunk that
//! failed) is ever buffered. After a refusal, [`UpdateAssembler::into_received_bytes`] gives back
//! exactly the bytes that arrived, for quarantine.

use sha2::{Digest, Sha256};

use crate::error::{CoordinatorError, Result};

#[derive(Debug)]
pub struct UpdateAssembler {
    expected_values: usize,
    values: Vec<f32>,
    carry: Vec<u8>,
    hasher: Sha256,
    sum_of_squares: f64,
    /// The chunk that was refused, kept whole (the values before it stay in `values`).
    refused_chunk: Vec<u8>,
}

impl UpdateAssembler {
    pub fn new(expected_values: usize) -> Self {
        Self {
            expected_values,
            values: Vec::with_capacity(expected_values),
            carry: Vec::with_capacity(4),
            hasher: Sha256::new(),
            sum_of_squares: 0.0,
            refused_chunk: Vec::new(),
        }
    }

    /// Bytes received so far and accepted (not counting a refused chunk).
    pub fn received_bytes(&self) -> usize {
        self.values.len() * 4 + self.carry.len()
    }

    /// Adds one data chunk. A refused chunk leaves the assembler as it was before it, with
    /// the chunk kept aside for [`Self::into_received_bytes`]; push nothing more after that.
    pub fn push(&mut self, data: &[u8]) -> Result<()> {
        let (values_before, carry_before) = (self.values.len(), self.carry.clone());
        let result = self.push_values(data);
        if result.is_err() {
            self.values.truncate(values_before);
            self.carry = carry_before;
            self.refused_chunk = data.to_vec();
        }
        result
    }

    fn push_values(&mut self, data: &[u8]) -> Result<()> {
        let expected_bytes = self.expected_values * 4;
        if self.received_bytes() + data.len() > expected_bytes {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update is longer than the {} parameters declared ({} bytes)",
                self.expected_values, expected_bytes
            )));
        }
        let mut rest = data;
        if !self.carry.is_empty() {
            let take = (4 - self.carry.len()).min(rest.len());
            self.carry.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.carry.len() == 4 {
                let bytes = [self.carry[0], self.carry[1], self.carry[2], self.carry[3]];
                self.carry.clear();
                self.accept(f32::from_le_bytes(bytes))?;
            }
        }
        let mut chunks = rest.chunks_exact(4);
        for c in &mut chunks {
            self.accept(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))?;
        }
        self.carry.extend_from_slice(chunks.remainder());
        self.hasher.update(data);
        Ok(())
    }

    fn accept(&mut self, value: f32) -> Result<()> {
        if !value.is_finite() {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update value {} is not finite ({value})",
                self.values.len()
            )));
        }
        self.sum_of_squares += f64::from(value) * f64::from(value);
        self.values.push(value);
        Ok(())
    }

    /// Checks completeness and the checksum; returns the delta and its L2 norm. On a refusal
    /// the assembler keeps what it received.
    pub fn finish(&mut self, sha256: &[u8]) -> Result<(Vec<f32>, f64)> {
        if self.values.len() != self.expected_values || !self.carry.is_empty() {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update has {} bytes, expected {} ({} parameters)",
                self.received_bytes(),
                self.expected_values * 4,
                self.expected_values
            )));
        }
        let digest = self.hasher.clone().finalize();
        if digest.as_slice() != sha256 {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update SHA-256 mismatch: computed {}, trailer says {}",
                hex::encode(digest),
                hex::encode(sha256)
            )));
        }
        Ok((std::mem::take(&mut self.values), self.sum_of_squares.sqrt()))
    }

    /// Exactly the bytes that arrived, in order, including a refused chunk (the values were
    /// decoded bit for bit, so re-encoding them is lossless).
    pub fn into_received_bytes(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.received_bytes() + self.refused_chunk.len());
        bytes.extend(self.values.iter().flat_map(|v| v.to_le_bytes()));
        bytes.extend_from_slice(&self.carry);
        bytes.extend_from_slice(&self.refused_chunk);
        bytes
    }
}

#[cfg(test)]
mod upload_tests {
    use super::*;

    fn bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn assembles_across_odd_chunk_boundaries() {
        let values = [1.0f32, -2.0, 0.5, 3.25];
        let data = bytes(&values);
        let mut asm = UpdateAssembler::new(4);
        for chunk in data.chunks(3) {
            asm.push(chunk).ok();
        }
        let sha = Sha256::digest(&data);
        let (got, norm) = asm.finish(&sha).unwrap_or_default();
        assert_eq!(got, values);
        assert!((norm - (1.0f64 + 4.0 + 0.25 + 10.5625).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn refuses_long_short_nonfinite_and_bad_checksum() {
        let mut asm = UpdateAssembler::new(2);
        assert!(asm.push(&bytes(&[1.0, 2.0, 3.0])).is_err());

        let mut asm = UpdateAssembler::new(2);
        let sha = Sha256::digest([]);
        assert!(asm.finish(&sha).is_err());

        let mut asm = UpdateAssembler::new(2);
        assert!(asm.push(&bytes(&[1.0, f32::NAN])).is_err());
        let mut asm = UpdateAssembler::new(2);
        assert!(asm.push(&bytes(&[f32::INFINITY, 1.0])).is_err());

        let mut asm = UpdateAssembler::new(2);
        asm.push(&bytes(&[1.0, 2.0])).ok();
        assert!(asm.finish(&[0u8; 32]).is_err());
    }

    #[test]
    fn a_refused_upload_gives_back_exactly_the_bytes_received() {
        // Refused mid-chunk (a NaN in the second chunk, which started inside a value).
        let mut data = bytes(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        data[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
        let mut asm = UpdateAssembler::new(5);
        assert!(asm.push(&data[..6]).is_ok());
        assert!(asm.push(&data[6..17]).is_err());
        assert_eq!(asm.into_received_bytes(), data[..17].to_vec());

        // Refused for length: the too-long chunk is kept whole.
        let data = bytes(&[1.0, 2.0, 3.0]);
        let mut asm = UpdateAssembler::new(2);
        assert!(asm.push(&data[..5]).is_ok());
        assert!(asm.push(&data[5..]).is_err());
        assert_eq!(asm.into_received_bytes(), data);

        // Refused at the end (checksum), odd chunking.
        let data = bytes(&[0.5, -0.25, 8.0]);
        let mut asm = UpdateAssembler::new(3);
        for chunk in data.chunks(5) {
            assert!(asm.push(chunk).is_ok());
        }
        assert!(asm.finish(&[7u8; 32]).is_err());
        assert_eq!(asm.into_received_bytes(), data);

        // A short update.
        let mut asm = UpdateAssembler::new(3);
        assert!(asm.push(&data[..7]).is_ok());
        assert!(asm.finish(&Sha256::digest(&data[..7])).is_err());
        assert_eq!(asm.into_received_bytes(), data[..7].to_vec());
    }
}
