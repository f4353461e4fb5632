//! Copies of device tensors on the host.

use burn::tensor::Tensor;

use crate::error::{CoreError, Result};

/// The values of a float tensor as f32, in row-major order.
pub fn to_f32_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_into_vec_as::<f32>().map_err(|e| CoreError::Invalid(format!("reading a tensor back: {e:?}")))
}
