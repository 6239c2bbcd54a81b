//! Arrow's row format for rows of fixed-width columns, encoded and decoded
//! directly.
//!
//! The online stores keep keys and values in Arrow's row format
//! ([`arrow::row`]). For the common case of keys and features that are all 32- or
//! 64-bit integers or floats, a row is a fixed sequence of one validity byte and
//! the big-endian, order-preserving bytes of each value, and a lookup of a few
//! entities spends most of its time in the general converter's set-up (buffers,
//! null bitmaps, one array builder per column). These functions produce and read
//! the same bytes without it. The tests check every supported type against
//! `RowConverter`, nulls and special floats included, so a change of the format in
//! a new arrow release fails them instead of misreading rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type,
    UInt64Type,
};

/// The columns of a fixed-width row: per column its type and byte offset, and the
/// row's length.
#[derive(Debug, Clone)]
pub(super) struct FixedLayout {
    columns: Vec<(DataType, usize)>,
    len: usize,
}

/// Bytes of one value of `t` in a row (validity byte included), for the types
/// this module handles.
fn width(t: &DataType) -> Option<usize> {
    match t {
        DataType::Int32 | DataType::UInt32 | DataType::Float32 => Some(5),
        DataType::Int64 | DataType::UInt64 | DataType::Float64 => Some(9),
        _ => None,
    }
}

impl FixedLayout {
    /// The layout of rows of `types`; `None` when one of them is not handled here.
    pub(super) fn of<'a>(types: impl Iterator<Item = &'a DataType>) -> Option<Self> {
        let mut columns = Vec::new();
        let mut len = 0;
        for t in types {
            columns.push((t.clone(), len));
            len += width(t)?;
        }
        Some(Self { columns, len })
    }

    /// Bytes per row.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Rows of the non-null `columns` (one per layout column, as the layout
    /// says), back to back; `None` when a column is not of its layout type or
    /// holds nulls.
    pub(super) fn encode(&self, columns: &[ArrayRef]) -> Option<Vec<u8>> {
        let rows = columns.first().map_or(0, |c| c.len());
        if columns.len() != self.columns.len() {
            return None;
        }
        let mut out = vec![0u8; rows * self.len];
        for (column, (t, offset)) in columns.iter().zip(&self.columns) {
            if column.data_type() != t || column.null_count() > 0 || column.len() != rows {
                return None;
            }
            let cells = out.chunks_exact_mut(self.len).map(|r| &mut r[*offset..]);
            match t {
                DataType::Int32 => put(cells, column.as_primitive::<Int32Type>(), |v| {
                    flip(v.to_be_bytes())
                }),
                DataType::Int64 => put(cells, column.as_primitive::<Int64Type>(), |v| {
                    flip(v.to_be_bytes())
                }),
                DataType::UInt32 => {
                    put(cells, column.as_primitive::<UInt32Type>(), u32::to_be_bytes)
                }
                DataType::UInt64 => {
                    put(cells, column.as_primitive::<UInt64Type>(), u64::to_be_bytes)
                }
                DataType::Float32 => put(cells, column.as_primitive::<Float32Type>(), |v| {
                    let s = v.to_bits() as i32;
                    flip((s ^ (((s >> 31) as u32) >> 1) as i32).to_be_bytes())
                }),
                DataType::Float64 => put(cells, column.as_primitive::<Float64Type>(), |v| {
                    let s = v.to_bits() as i64;
                    flip((s ^ (((s >> 63) as u64) >> 1) as i64).to_be_bytes())
                }),
                _ => return None,
            }
        }
        Some(out)
    }

    /// The columns at `wanted` of `rows` (each one row of this layout); `None`
    /// when a row is not of this layout.
    pub(super) fn decode(&self, wanted: &[usize], rows: &[&[u8]]) -> Option<Vec<ArrayRef>> {
        if rows.iter().any(|r| r.len() != self.len) {
            return None;
        }
        wanted
            .iter()
            .map(|&w| {
                let (t, offset) = self.columns.get(w)?;
                let cells = rows.iter().map(|r| &r[*offset..]);
                Some(match t {
                    DataType::Int32 => {
                        take::<Int32Type, 4>(cells, |b| i32::from_be_bytes(flip(b)))?
                    }
                    DataType::Int64 => {
                        take::<Int64Type, 8>(cells, |b| i64::from_be_bytes(flip(b)))?
                    }
                    DataType::UInt32 => take::<UInt32Type, 4>(cells, u32::from_be_bytes)?,
                    DataType::UInt64 => take::<UInt64Type, 8>(cells, u64::from_be_bytes)?,
                    DataType::Float32 => take::<Float32Type, 4>(cells, |b| {
                        let s = i32::from_be_bytes(flip(b));
                        f32::from_bits((s ^ (((s >> 31) as u32) >> 1) as i32) as u32)
                    })?,
                    DataType::Float64 => take::<Float64Type, 8>(cells, |b| {
                        let s = i64::from_be_bytes(flip(b));
                        f64::from_bits((s ^ (((s >> 63) as u64) >> 1) as i64) as u64)
                    })?,
                    _ => return None,
                })
            })
            .collect()
    }
}

/// The first byte's top bit flipped: signed values sort as unsigned bytes.
fn flip<const N: usize>(mut b: [u8; N]) -> [u8; N] {
    b[0] ^= 0x80;
    b
}

/// Writes a validity byte and `encode(value)` at the start of each cell.
fn put<'a, T: ArrowPrimitiveType, const N: usize>(
    cells: impl Iterator<Item = &'a mut [u8]>,
    column: &PrimitiveArray<T>,
    encode: impl Fn(T::Native) -> [u8; N],
) {
    for (cell, &v) in cells.zip(column.values().iter()) {
        cell[0] = 1;
        cell[1..=N].copy_from_slice(&encode(v));
    }
}

/// One column from the cells (validity byte then `N` value bytes) of its rows.
fn take<'a, T: ArrowPrimitiveType, const N: usize>(
    cells: impl Iterator<Item = &'a [u8]>,
    decode: impl Fn([u8; N]) -> T::Native,
) -> Option<ArrayRef> {
    let mut values = Vec::with_capacity(cells.size_hint().0);
    // Validity only once a null shows up: most features have none.
    let mut valid: Option<Vec<bool>> = None;
    for cell in cells {
        let bytes: [u8; N] = cell.get(1..=N)?.try_into().ok()?;
        match cell[0] {
            1 => {
                values.push(decode(bytes));
                if let Some(v) = &mut valid {
                    v.push(true);
                }
            }
            0 => {
                valid
                    .get_or_insert_with(|| vec![true; values.len()])
                    .push(false);
                values.push(T::Native::default());
            }
            _ => return None,
        }
    }
    let nulls = valid.map(NullBuffer::from);
    Some(Arc::new(PrimitiveArray::<T>::new(
        ScalarBuffer::from(values),
        nulls,
    )))
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        Float32Array, Float64Array, Int32Array, Int64Array, UInt32Array, UInt64Array,
    };
    use arrow::row::{RowConverter, SortField};
    use proptest::prelude::*;

    use super::*;

    fn converter(columns: &[ArrayRef]) -> RowConverter {
        RowConverter::new(
            columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )
        .unwrap()
    }

    fn column(kind: usize, seed: &[(u64, bool)]) -> ArrayRef {
        let valid = |i: usize| seed[i].1;
        let bits = |i: usize| seed[i].0;
        let n = seed.len();
        match kind {
            0 => Arc::new(Int32Array::from_iter(
                (0..n).map(|i| valid(i).then(|| bits(i) as i32)),
            )),
            1 => Arc::new(Int64Array::from_iter(
                (0..n).map(|i| valid(i).then(|| bits(i) as i64)),
            )),
            2 => Arc::new(UInt32Array::from_iter(
                (0..n).map(|i| valid(i).then(|| bits(i) as u32)),
            )),
            3 => Arc::new(UInt64Array::from_iter(
                (0..n).map(|i| valid(i).then(|| bits(i))),
            )),
            4 => Arc::new(Float32Array::from_iter(
                (0..n).map(|i| valid(i).then(|| f32::from_bits(bits(i) as u32))),
            )),
            _ => Arc::new(Float64Array::from_iter(
                (0..n).map(|i| valid(i).then(|| f64::from_bits(bits(i)))),
            )),
        }
    }

    /// Raw bits, with the edge cases (zeros, infinities, NaNs, extremes) often.
    fn bits() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            Just(0u64),
            Just(1u64 << 63),
            Just(f64::INFINITY.to_bits()),
            Just(f64::NEG_INFINITY.to_bits()),
            Just(f64::NAN.to_bits()),
            Just(f32::NAN.to_bits() as u64),
            Just(f32::NEG_INFINITY.to_bits() as u64),
            Just(u64::MAX),
            Just(i32::MIN as u32 as u64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn rows_match_arrows_row_format(
            kinds in prop::collection::vec(0usize..6, 1..5),
            seed in prop::collection::vec((bits(), any::<bool>()), 0..20),
            wanted_seed in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let columns: Vec<ArrayRef> = kinds.iter().map(|&k| column(k, &seed)).collect();
            let layout = FixedLayout::of(columns.iter().map(|c| c.data_type())).unwrap();
            let rows = converter(&columns).convert_columns(&columns).unwrap();
            // Encoding, for columns without nulls.
            let dense: Vec<ArrayRef> = kinds
                .iter()
                .map(|&k| column(k, &seed.iter().map(|&(b, _)| (b, true)).collect::<Vec<_>>()))
                .collect();
            let dense_rows = converter(&dense).convert_columns(&dense).unwrap();
            let ours = layout.encode(&dense).unwrap();
            for i in 0..seed.len() {
                prop_assert_eq!(&ours[i * layout.len..(i + 1) * layout.len], dense_rows.row(i).data());
            }
            // Decoding, nulls included, of any columns in any order.
            let wanted: Vec<usize> = wanted_seed.iter().map(|x| x.index(kinds.len())).collect();
            let slices: Vec<&[u8]> = (0..seed.len()).map(|i| rows.row(i).data()).collect();
            let decoded = layout.decode(&wanted, &slices).unwrap();
            for (array, &w) in decoded.iter().zip(&wanted) {
                prop_assert_eq!(array.to_data(), columns[w].to_data());
            }
        }
    }

    #[test]
    fn other_types_and_foreign_rows_are_left_to_arrow() {
        assert!(FixedLayout::of([DataType::Utf8].iter()).is_none());
        assert!(FixedLayout::of([DataType::Int64, DataType::Boolean].iter()).is_none());
        let layout = FixedLayout::of([DataType::Int64].iter()).unwrap();
        assert!(
            layout.decode(&[0], &[&[1u8, 2, 3][..]]).is_none(),
            "short row"
        );
        assert!(
            layout.decode(&[0], &[&[7u8; 9][..]]).is_none(),
            "bad validity byte"
        );
        let nulls: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        assert!(layout.encode(&[nulls]).is_none(), "keys with nulls");
        let wrong: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        assert!(layout.encode(&[wrong]).is_none(), "wrong type");
    }
}
