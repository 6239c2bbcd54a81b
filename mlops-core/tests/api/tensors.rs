//! The tensor model: checked construction and the dense-array bridge.

use mlops_core::inference::{Tensor, TensorData};

#[test]
fn tensors_convert_to_and_from_dense_arrays() {
    let t = Tensor::new("x", vec![2, 2], TensorData::Int32(vec![1, 2, 3, 4])).unwrap();
    let a = t.to_array_f32().unwrap();
    assert_eq!(a.shape(), &[2, 2]);
    assert_eq!(a[[1, 0]], 3.0);
    let back = Tensor::from_array_f32("x", a.clone());
    assert_eq!(back.data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
    // A transposed (non-standard layout) view still comes out row-major.
    let transposed = Tensor::from_array_f32("t", a.reversed_axes());
    assert_eq!(transposed.data, TensorData::Fp32(vec![1.0, 3.0, 2.0, 4.0]));
    assert_eq!(t.rows(), 2);

    let err = Tensor::new("x", vec![3], TensorData::Fp32(vec![1.0])).unwrap_err();
    assert!(err.to_string().contains("tensor 'x'"), "{err}");
    let bytes = Tensor::new("s", vec![1], TensorData::Bytes(vec![b"a".to_vec()])).unwrap();
    assert!(bytes.to_array_f32().is_err());
}
