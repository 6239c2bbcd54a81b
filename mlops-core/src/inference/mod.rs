//! The Open Inference Protocol (v2) as data: tensors, requests, responses and
//! model metadata, with the spec's names.
//!
//! The same types serve the in-process [`Server`](crate::Server), any transport in
//! front of it and the remote client, and a [`Tensor`] is what a
//! [`Predictor`](crate::Predictor) consumes and produces, so a request is decoded
//! once and never copied again. Wire forms (the protocol's JSON, the binary tensor
//! extension) live with the transports that speak them (`mlops-serve`'s
//! `http::codec`), not here.
//!
//! - [`tensor`](Tensor): [`Datatype`], [`TensorData`], [`Shape`], [`Tensor`],
//!   [`Parameters`];
//! - messages: [`InferenceRequest`], [`InferenceResponse`], [`RequestOutput`],
//!   [`ServerMetadataResponse`], [`ModelMetadataResponse`];
//! - [`TensorSpec`]: a model's declared input or output, which a tensor is checked
//!   against;
//! - [`tensors_from_batch`] and [`tensor_to_column`]: Arrow columns to input tensors
//!   and back.
//!
//! ```
//! use mlops_core::inference::{Datatype, InferenceRequest, Tensor, TensorData, TensorSpec};
//!
//! let x = Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]))?;
//! let request = InferenceRequest::new(vec![x]);
//! TensorSpec::new("x", Datatype::Fp32, vec![-1, 2]).check(&request.inputs[0])?;
//!
//! // A shape that does not match the data is refused with a message naming the tensor.
//! let err = Tensor::new("x", vec![3], TensorData::Fp32(vec![1.0, 2.0])).unwrap_err();
//! assert!(err.to_string().contains("tensor 'x'"));
//! # Ok::<(), mlops_core::Error>(())
//! ```

mod arrow;
mod messages;
mod spec;
mod tensor;

pub use arrow::{
    matrix_from_columns, tensor_column, tensor_columns, tensor_to_column, tensors_for_signature,
    tensors_from_batch,
};
pub use messages::{
    InferenceRequest, InferenceResponse, ModelMetadataResponse, PREDICTION_ID, RequestOutput,
    ServerMetadataResponse,
};
pub use spec::TensorSpec;
pub use tensor::{
    Datatype, ParameterValue, Parameters, RequestInput, ResponseOutput, Shape, Tensor, TensorData,
    check_element_count,
};
