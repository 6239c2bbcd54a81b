//! [`TensorSpec`]: a model's declared input or output.

use serde::{Deserialize, Serialize};

use super::tensor::{Datatype, Tensor};
use crate::error::{Error, Result};

/// A tensor's name, datatype and shape without data: a model's declared input or
/// output (`$metadata_tensor`). `-1` marks a variable-size dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub datatype: Datatype,
    /// Its shape; `-1` for a dimension of any size (typically the batch).
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// A spec for `name` of `datatype` and `shape`.
    pub fn new(name: impl Into<String>, datatype: Datatype, shape: Vec<i64>) -> Self {
        Self {
            name: name.into(),
            datatype,
            shape,
        }
    }

    /// Whether `tensor` matches this spec: same datatype, same rank, and equal sizes
    /// where this spec fixes one. The error names the tensor and the difference.
    pub fn check(&self, tensor: &Tensor) -> Result<()> {
        let what = || format!("input '{}'", self.name);
        if tensor.datatype() != self.datatype {
            return Err(Error::invalid_input(
                what(),
                format!(
                    "datatype {} where the model expects {}",
                    tensor.datatype(),
                    self.datatype
                ),
            ));
        }
        let fits = tensor.shape.len() == self.shape.len()
            && tensor
                .shape
                .iter()
                .zip(&self.shape)
                .all(|(&got, &want)| want < 0 || i64::try_from(got).is_ok_and(|g| g == want));
        if !fits {
            return Err(Error::invalid_input(
                what(),
                format!(
                    "shape {:?} where the model expects {:?} (-1: any size)",
                    tensor.shape, self.shape
                ),
            ));
        }
        Ok(())
    }
}
