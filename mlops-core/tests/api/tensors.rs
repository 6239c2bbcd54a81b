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

#[test]
fn tables_and_tensors_map_both_ways_or_name_what_does_not_fit() {
    use mlops_core::inference::{
        Datatype, TensorSpec, matrix_from_columns, tensor_column, tensor_columns,
        tensors_for_signature,
    };
    use mlops_core::model::Signature;
    let x = Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0])).unwrap();
    let columns = tensor_columns(&x).unwrap();
    assert_eq!(columns.len(), 2);
    assert!(tensor_column(std::slice::from_ref(&x), "x[1]").is_some());
    assert!(
        tensor_column(std::slice::from_ref(&x), "x[2]").is_none(),
        "beyond the width"
    );
    assert!(
        tensor_column(std::slice::from_ref(&x), "y").is_none(),
        "no such tensor"
    );
    let cube = Tensor::new("c", vec![1, 2, 2], TensorData::Fp32(vec![0.0; 4])).unwrap();
    assert!(
        tensor_columns(&cube).unwrap().is_empty(),
        "rank 3 has no columns"
    );

    // A matrix needs one-dimensional columns of one type and length.
    let a = Tensor::new("a", vec![2], TensorData::Fp32(vec![1.0, 2.0])).unwrap();
    let short = Tensor::new("b", vec![1], TensorData::Fp32(vec![1.0])).unwrap();
    let ints = Tensor::new("b", vec![2], TensorData::Int64(vec![1, 2])).unwrap();
    for bad in [vec![a.clone(), short], vec![a.clone(), ints], vec![]] {
        let e = matrix_from_columns("m", &bad).unwrap_err();
        assert!(e.to_string().contains("'m'"), "{e}");
    }
    let e = matrix_from_columns("m", std::slice::from_ref(&x)).unwrap_err();
    assert!(e.to_string().contains("'x'"), "{e}");

    // Columns onto a signature: x[0], x[1] fill [N, 2]; a missing one is named;
    // zero rows give a [0, 2] matrix; a rank-3 input cannot be filled.
    let signature = Signature::new(
        vec![TensorSpec::new("x", Datatype::Fp32, vec![-1, 2])],
        vec![],
    );
    let batch = arrow_array::RecordBatch::try_from_iter(columns.clone()).unwrap();
    let back = tensors_for_signature(&signature, &batch).unwrap();
    assert_eq!(
        back[0],
        Tensor::new("x", vec![2, 2], x.data.clone()).unwrap()
    );
    let empty = tensors_for_signature(&signature, &batch.slice(0, 0)).unwrap();
    assert_eq!(empty[0].shape[..], [0, 2]);
    let one = arrow_array::RecordBatch::try_from_iter(columns[..1].to_vec()).unwrap();
    let e = tensors_for_signature(&signature, &one).unwrap_err();
    assert!(e.to_string().contains("x[1]"), "{e}");
    let deep = Signature::new(
        vec![TensorSpec::new("c", Datatype::Fp32, vec![-1, 2, 2])],
        vec![],
    );
    assert!(tensors_for_signature(&deep, &batch).is_err());
}
