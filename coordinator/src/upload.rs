//! Assembles an uploaded delta chunk by chunk, refusing it at the first bad byte: too long,
//! non-finite values, wrong checksum. Nothing beyond the declared size is ever buffered.

use sha2::{Digest, Sha256};

use crate::error::{CoordinatorError, Result};

#[derive(Debug)]
pub struct UpdateAssembler {
    expected_values: usize,
    values: Vec<f32>,
    carry: Vec<u8>,
    hasher: Sha256,
    sum_of_squares: f64,
}

impl UpdateAssembler {
    pub fn new(expected_values: usize) -> Self {
        Self {
            expected_values,
            values: Vec::with_capacity(expected_values),
            carry: Vec::with_capacity(4),
            hasher: Sha256::new(),
            sum_of_squares: 0.0,
        }
    }

    /// Bytes received so far.
    pub fn received_bytes(&self) -> usize {
        self.values.len() * 4 + self.carry.len()
    }

    /// Adds one data chunk.
    pub fn push(&mut self, data: &[u8]) -> Result<()> {
        let expected_bytes = self.expected_values * 4;
        if self.received_bytes() + data.len() > expected_bytes {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update is longer than the {} parameters declared ({} bytes)",
                self.expected_values, expected_bytes
            )));
        }
        self.hasher.update(data);
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

    /// Checks completeness and the checksum; returns the delta and its L2 norm.
    pub fn finish(self, sha256: &[u8]) -> Result<(Vec<f32>, f64)> {
        if self.values.len() != self.expected_values || !self.carry.is_empty() {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update has {} bytes, expected {} ({} parameters)",
                self.received_bytes(),
                self.expected_values * 4,
                self.expected_values
            )));
        }
        let digest = self.hasher.finalize();
        if digest.as_slice() != sha256 {
            return Err(CoordinatorError::InvalidArgument(format!(
                "update SHA-256 mismatch: computed {}, trailer says {}",
                hex::encode(digest),
                hex::encode(sha256)
            )));
        }
        Ok((self.values, self.sum_of_squares.sqrt()))
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

        let asm = UpdateAssembler::new(2);
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
}
