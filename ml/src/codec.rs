//! How a file's vectors are stored (before sealing): `CSV1`, the number of dimensions and of vectors
//! as little-endian `u32`s, then every number as a little-endian `f32`.

use crate::{ModelError, ModelResult};

const MAGIC: &[u8; 4] = b"CSV1";

/// The bytes of `vectors`, all of length `dims`.
///
/// # Panics
/// Never for the vectors the models make; a vector of another length is a bug and is cut or padded
/// with zeros rather than written wrongly.
#[must_use]
pub fn encode(dims: usize, vectors: &[Vec<f32>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + vectors.len() * dims * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(dims).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&u32::try_from(vectors.len()).unwrap_or(u32::MAX).to_le_bytes());
    for vector in vectors {
        for i in 0..dims {
            out.extend_from_slice(&vector.get(i).copied().unwrap_or(0.0).to_le_bytes());
        }
    }
    out
}

/// The vectors in `bytes`.
///
/// # Errors
/// Bytes that [`encode`] did not make.
pub fn decode(bytes: &[u8]) -> ModelResult<Vec<Vec<f32>>> {
    let malformed = |why: &str| ModelError::Run(format!("stored vectors are malformed: {why}"));
    let header = bytes.get(..12).ok_or_else(|| malformed("too short"))?;
    if &header[..4] != MAGIC {
        return Err(malformed("unknown format"));
    }
    let number = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]) as usize;
    let (dims, count) = (number(4), number(8));
    let body = &bytes[12..];
    if dims == 0 || body.len() != dims.saturating_mul(count).saturating_mul(4) {
        return Err(malformed("wrong length"));
    }
    Ok(body
        .chunks_exact(dims * 4)
        .map(|vector| {
            vector
                .chunks_exact(4)
                .map(|n| f32::from_le_bytes([n[0], n[1], n[2], n[3]]))
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_as_they_went_and_garbage_is_refused() {
        let vectors = vec![vec![0.5, -1.25, 3.0], vec![f32::MIN_POSITIVE, 0.0, -0.0]];
        let bytes = encode(3, &vectors);
        assert_eq!(bytes.len(), 12 + 6 * 4);
        assert_eq!(decode(&bytes).expect("decodes"), vectors);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(b"CSV2\x03\0\0\0\0\0\0\0").is_err());
        assert!(decode(b"CSV1").is_err());
        assert_eq!(decode(&encode(3, &[])).expect("empty"), Vec::<Vec<f32>>::new());
    }
}
