//! Primitive, bounds-checked binary encoding shared by the wire formats.
//!
//! Unsigned integers are LEB128 varints (at most 10 bytes); signed ones are zigzag-mapped
//! first; byte strings are a varint length followed by the bytes, with a caller-given bound
//! checked before anything is allocated. A [`Reader`] never panics on any input: every read
//! returns a [`DecodeError`] when the bytes run out or break a bound.

use thiserror::Error;

/// Why bytes do not decode.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("truncated input while reading {0}")]
    Truncated(&'static str),
    /// A varint has more than 10 bytes or overflows 64 bits.
    #[error("malformed varint in {0}")]
    BadVarint(&'static str),
    /// A length or count is above its bound.
    #[error("{what} of {value} exceeds the limit of {max}")]
    TooLarge {
        what: &'static str,
        value: u64,
        max: u64,
    },
    /// An enumeration field holds an unknown value.
    #[error("invalid {what} value {value}")]
    BadEnum { what: &'static str, value: u64 },
    /// Bytes are left over after a complete value.
    #[error("{0} trailing bytes after a complete message")]
    TrailingBytes(usize),
}

/// Appends a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a zigzag-encoded signed varint.
pub fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Bytes `put_varint` writes for `value`.
pub fn varint_len(value: u64) -> u64 {
    u64::from((64 - value.leading_zeros()).max(1).div_ceil(7))
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over untrusted bytes.
pub struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input }
    }

    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.input.len()))
        }
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let (&first, rest) = self
            .input
            .split_first()
            .ok_or(DecodeError::Truncated(what))?;
        self.input = rest;
        Ok(first)
    }

    /// A flag byte: 0 or 1; anything else is `BadEnum`.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadEnum {
                what,
                value: v.into(),
            }),
        }
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && bits > 1 {
                return Err(DecodeError::BadVarint(what));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint(what))
    }

    pub fn signed(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let raw = self.varint(what)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// A count, checked against `max` before the caller allocates for it.
    pub fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let value = self.varint(what)?;
        if value > max as u64 {
            return Err(DecodeError::TooLarge {
                what,
                value,
                max: max as u64,
            });
        }
        Ok(value as usize)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.count(what, max)?;
        if len > self.input.len() {
            return Err(DecodeError::Truncated(what));
        }
        let (bytes, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.varint("v"), Ok(v));
            r.finish().unwrap();
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            put_signed(&mut out, v);
            assert_eq!(Reader::new(&out).signed("s"), Ok(v));
        }
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        assert_eq!(
            Reader::new(&[0x80; 11]).varint("v"),
            Err(DecodeError::BadVarint("v"))
        );
        assert_eq!(
            Reader::new(&[0xff; 9]).varint("v"),
            Err(DecodeError::Truncated("v"))
        );
        let mut big = vec![0xff; 9];
        big.push(0x02);
        assert_eq!(
            Reader::new(&big).varint("v"),
            Err(DecodeError::BadVarint("v"))
        );
        assert!(matches!(
            Reader::new(&[5, 1, 2]).bytes("b", 10),
            Err(DecodeError::Truncated("b"))
        ));
        assert!(matches!(
            Reader::new(&[50]).bytes("b", 10),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
