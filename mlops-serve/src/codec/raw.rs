//! The binary tensor layout: a tensor's elements as raw little-endian bytes, and
//! the parameter and header names of the binary tensor extension.
//!
//! `BOOL` is one byte per element; `FP16` is IEEE half precision; `BYTES` elements
//! are each a 4-byte little-endian length and the bytes.

use mlops_core::inference::{Datatype, TensorData};

/// The parameter naming a tensor's binary size.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// The per-output parameter asking for binary data.
pub const BINARY_DATA: &str = "binary_data";
/// The request parameter asking for every output in binary.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// The HTTP header giving the JSON part's length.
pub const HEADER_CONTENT_LENGTH: &str = "Inference-Header-Content-Length";

/// Reads raw little-endian elements of `datatype` from `bytes`.
pub(crate) fn decode_raw(
    name: &str,
    datatype: Datatype,
    bytes: &[u8],
) -> std::result::Result<TensorData, String> {
    fn chunks<const N: usize, T>(
        name: &str,
        datatype: Datatype,
        bytes: &[u8],
        f: impl Fn([u8; N]) -> T,
    ) -> std::result::Result<Vec<T>, String> {
        if !bytes.len().is_multiple_of(N) {
            return Err(format!(
                "tensor '{name}': {} binary bytes is not a whole number of {datatype} elements ({N} bytes each)",
                bytes.len()
            ));
        }
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
    super::meter::take(
        format_args!("tensor '{name}'"),
        decoded_bytes(datatype, bytes),
    )?;
    let d = datatype;
    Ok(match datatype {
        Datatype::Bool => TensorData::Bool(
            bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!(
                        "tensor '{name}': BOOL element {i} is byte {b}, not 0 or 1"
                    )),
                })
                .collect::<std::result::Result<_, _>>()?,
        ),
        Datatype::Uint8 => TensorData::Uint8(bytes.to_vec()),
        Datatype::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
        Datatype::Uint16 => TensorData::Uint16(chunks(name, d, bytes, u16::from_le_bytes)?),
        Datatype::Int16 => TensorData::Int16(chunks(name, d, bytes, i16::from_le_bytes)?),
        Datatype::Uint32 => TensorData::Uint32(chunks(name, d, bytes, u32::from_le_bytes)?),
        Datatype::Int32 => TensorData::Int32(chunks(name, d, bytes, i32::from_le_bytes)?),
        Datatype::Uint64 => TensorData::Uint64(chunks(name, d, bytes, u64::from_le_bytes)?),
        Datatype::Int64 => TensorData::Int64(chunks(name, d, bytes, i64::from_le_bytes)?),
        Datatype::Fp16 => TensorData::Fp16(chunks(name, d, bytes, |b| {
            f16_to_f32(u16::from_le_bytes(b))
        })?),
        Datatype::Fp32 => TensorData::Fp32(chunks(name, d, bytes, f32::from_le_bytes)?),
        Datatype::Fp64 => TensorData::Fp64(chunks(name, d, bytes, f64::from_le_bytes)?),
        Datatype::Bytes => {
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(format!(
                        "tensor '{name}': BYTES element {} has a truncated length prefix",
                        out.len()
                    ));
                }
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                rest = &rest[4..];
                if len > rest.len() {
                    return Err(format!(
                        "tensor '{name}': BYTES element {} claims {len} bytes but {} remain",
                        out.len(),
                        rest.len()
                    ));
                }
                out.push(rest[..len].to_vec());
                rest = &rest[len..];
            }
            TensorData::Bytes(out)
        }
    })
}

/// The bytes the elements of `datatype` in `bytes` take once decoded, counted
/// before they are: a `BYTES` element its vector's header and its bytes (the
/// length prefixes are walked, nothing is allocated). Malformed data counts
/// what can be walked; decoding then says what is wrong.
fn decoded_bytes(datatype: Datatype, bytes: &[u8]) -> usize {
    let wire = match datatype {
        Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
        Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => 2,
        Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
        Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
        Datatype::Bytes => {
            let (mut count, mut payload, mut rest) = (0usize, 0usize, bytes);
            while let Some((prefix, tail)) = rest.split_first_chunk::<4>() {
                let len = (u32::from_le_bytes(*prefix) as usize).min(tail.len());
                count += 1;
                payload += len;
                rest = &tail[len..];
            }
            return count
                .saturating_mul(std::mem::size_of::<Vec<u8>>())
                .saturating_add(payload);
        }
    };
    super::meter::elements_bytes(datatype, bytes.len() / wire).unwrap_or(usize::MAX)
}

/// Writes the elements raw, little-endian.
pub(crate) fn encode_raw(data: &TensorData, out: &mut Vec<u8>) {
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Int8(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::Uint16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Uint32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Uint64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Fp16(v) => v
            .iter()
            .for_each(|&x| out.extend_from_slice(&f32_to_f16(x).to_le_bytes())),
        TensorData::Fp32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Fp64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Bytes(v) => {
            for b in v {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
}

/// IEEE half to single precision (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Single to half precision, rounding to nearest even (values held as `FP16` are
/// exact halves already, so this is exact for them).
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rounded = (m + half - 1 + ((m >> shift) & 1)) >> shift;
        return sign | rounded as u16;
    }
    let half_mant = mant >> 13;
    let rest = mant & 0x1fff;
    let mut h = (sign as u32) | ((e as u32) << 10) | half_mant;
    if rest > 0x1000 || (rest == 0x1000 && (half_mant & 1) == 1) {
        h += 1;
    }
    h as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_round_trips() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            6.1035156e-5,
            5.9604645e-8,
            0.333_251_95,
        ] {
            assert_eq!(f16_to_f32(f32_to_f16(x)), x, "{x}");
        }
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        assert_eq!(f16_to_f32(f32_to_f16(1e6)), f32::INFINITY);
    }
}
